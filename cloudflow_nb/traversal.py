"""Generic plan traversal shared by the optimizer, the engines and the renderers."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from cloudflow_nb.errors import OptimizerError
from cloudflow_nb.plan import Node

__all__ = ["consumers", "fixpoint", "rewrite", "walk"]

Rule = Callable[[Node], "Node | None"]


def walk(root: Node, inputs: Callable[[Node], tuple[Node, ...]] | None = None) -> Iterator[Node]:
    """Every node reachable from ``root`` once, inputs before consumers, in a stable order.

    ``inputs(node)`` chooses which children to follow (default: all of them).
    """
    follow = inputs or (lambda node: node.children)
    seen: set[int] = set()
    order: list[Node] = []
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in seen:
            continue
        if expanded:
            seen.add(id(node))
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(follow(node)) if id(c) not in seen)
    return iter(order)


def consumers(root: Node) -> dict[int, list[Node]]:
    """``id(node) -> nodes that read it`` for every node under ``root``."""
    out: dict[int, list[Node]] = {id(n): [] for n in walk(root)}
    for node in walk(root):
        for child in node.children:
            out[id(child)].append(node)
    return out


def rewrite(root: Node, *rules: Rule) -> Node:
    """Apply ``rules`` bottom-up; unchanged subtrees are reused, shared subtrees stay shared.

    Each rule returns a replacement node or ``None`` (no change); the first rule that fires wins.
    """
    done: dict[int, Node] = {}
    for node in walk(root):
        children = tuple(done[id(c)] for c in node.children)
        changed = any(a is not b for a, b in zip(children, node.children, strict=True))
        current = node.replace_children(children) if changed else node
        for rule in rules:
            replacement = rule(current)
            if replacement is not None:
                current = replacement
                break
        done[id(node)] = current
    return done[id(root)]


def fixpoint(root: Node, *rules: Rule, max_rounds: int = 100) -> Node:
    """Rewrite until nothing changes; raise ``OptimizerError`` if that takes over ``max_rounds``."""
    for _ in range(max_rounds):
        new = rewrite(root, *rules)
        if new is root:
            return new
        root = new
    raise OptimizerError(f"optimizer does not converge after {max_rounds} rounds")
