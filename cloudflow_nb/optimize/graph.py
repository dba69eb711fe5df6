"""Read-only facts about a logical plan that the optimizer's rules share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cloudflow_nb.plan import Map, Node, Source
from cloudflow_nb.traversal import consumers, walk

__all__ = ["Graph", "device_of"]


def device_of(node: Node) -> str | None:
    """``"gpu"`` or ``"cpu"`` for a map (where its function must run), ``None`` for the rest."""
    if isinstance(node, Map):
        return "gpu" if node.gpu else "cpu"
    return None


@dataclass
class Graph:
    """A logical plan with its operators in dependency order and who reads each node.

    Parameters
    ----------
    root : Node
        The plan's output node.
    """

    root: Node
    nodes: list[Node] = field(init=False)
    readers: dict[int, list[Node]] = field(init=False)
    order: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        everything = list(walk(self.root))
        self.nodes = [n for n in everything if not isinstance(n, Source)]
        self.readers = consumers(self.root)
        self.order = {id(n): i for i, n in enumerate(everything)}

    def sorted(self, members: Iterable[Node]) -> list[Node]:
        """``members`` in dependency order."""
        return sorted(members, key=lambda n: self.order[id(n)])

    def group_problem(self, members: Sequence[Node]) -> str | None:
        """Why ``members`` cannot form one stage (``None`` when they can).

        A stage needs exactly one output: one member read outside it (or the plan's root). That
        also rules out stages that read their own output back: every other member feeds the
        output, so an outside node between them would close a cycle.
        """
        inside = {id(n) for n in members}
        outputs = [n for n in members if n is self.root or any(id(r) not in inside for r in self.readers[id(n)])]
        if len(outputs) == 1:
            return None
        return f"it would have {len(outputs)} outputs ({', '.join(n.title for n in outputs)})"
