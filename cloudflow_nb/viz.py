"""Graphviz renderings of plans, and the notebook display that never raises.

Node ids are assigned in dependency order, so the DOT source is byte-identical across runs. The
graphs returned are ``graphviz.Digraph`` objects whose own notebook display falls back to the
plan's text when the ``dot`` program is missing or broken (see :func:`digraph`).
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cloudflow_nb.explain import explain_logical, node_ids, schema_delta, stage_traits
from cloudflow_nb.plan import AnyOf, Join, Lookup, Map, Node, Source, Union
from cloudflow_nb.traversal import walk

if TYPE_CHECKING:
    import graphviz

    from cloudflow_nb.physical import Plan, Stage

__all__ = [
    "DOT_MISSING_HINT",
    "add_legend",
    "add_plan",
    "digraph",
    "label",
    "logical_graph",
    "mimebundle",
    "plan_graph",
    "stage_kinds",
]

DOT_MISSING_HINT = (
    "(graph not drawn: the Graphviz 'dot' program is missing; "
    "install it with 'apt-get install graphviz' or 'conda install graphviz', or see https://graphviz.org/download/)"
)

FONT = {"fontname": "Helvetica", "fontsize": "10"}
NODE_STYLE: dict[str, dict[str, str]] = {
    "source": {"shape": "invhouse", "style": "filled", "fillcolor": "#e8eef7"},
    "map": {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffffff"},
    "filter": {"shape": "trapezium", "style": "filled", "fillcolor": "#fdf6e3"},
    "agg": {"shape": "box", "style": "filled", "fillcolor": "#eef7ee"},
    "explode": {"shape": "invtrapezium", "style": "filled", "fillcolor": "#fdf6e3"},
    "lookup": {"shape": "cylinder", "style": "filled", "fillcolor": "#f3ecf8"},
    "join": {"shape": "hexagon", "style": "filled", "fillcolor": "#f7ecec"},
    "union": {"shape": "hexagon", "style": "filled", "fillcolor": "#f7ecec"},
    "anyof": {"shape": "hexagon", "style": "filled,dashed", "fillcolor": "#f7ecec"},
    "input": {"shape": "invhouse", "style": "filled", "fillcolor": "#e8eef7"},
}


def label(*parts: str) -> Any:
    """A multi-line node label with every part escaped for graphviz."""
    import graphviz

    return graphviz.nohtml("\\n".join(graphviz.escape(p) for p in parts if p))


def _node_lines(node: Node) -> list[str]:
    title = node.kind
    if isinstance(node, Map):
        extra = [f for f in ("batching", "gpu", "high_variance", "releases_gil") if getattr(node, f)]
        if extra:
            title += " [" + ", ".join(extra) + "]"
    elif isinstance(node, Lookup) and node.dynamic:
        title += " [dynamic]"
    name = node.label if not isinstance(node, (Union, AnyOf)) else ""
    return [title, name, *wrap_columns(schema_delta(node))]


def wrap_columns(text: str, width: int = 36) -> list[str]:
    """``a: int, b: str, ...`` split into lines of about ``width`` characters, at column boundaries."""
    lines: list[str] = []
    for part in text.split(", "):
        if lines and len(lines[-1]) + len(part) + 2 <= width:
            lines[-1] += ", " + part
        else:
            lines.append(part)
    return lines


def logical_graph(root: Node, rankdir: str = "TB") -> graphviz.Digraph:
    """The logical plan as a ``graphviz.Digraph`` (one node per operator)."""
    ids = node_ids(root)
    source = next(n for n in walk(root) if isinstance(n, Source))
    g = digraph(
        lambda: explain_logical(root),
        name=f"flow_{source.name}",
        graph_attr={"rankdir": rankdir, **FONT},
        node_attr=FONT,
        edge_attr=FONT,
    )
    for node in walk(root):
        g.node(ids[id(node)], label(*_node_lines(node)), **NODE_STYLE.get(node.kind, {}))
    for node in walk(root):
        for i, child in enumerate(node.children):
            attrs = {"label": "right"} if isinstance(node, Join) and i == 1 else {}
            g.edge(ids[id(child)], ids[id(node)], **attrs)
    return g


STAGE_STYLE: dict[str, dict[str, str]] = {
    "cpu": {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffffff"},
    "gpu": {"shape": "box", "style": "rounded,filled", "fillcolor": "#c8e6c9", "color": "#2e7d32"},
    "router": {"shape": "hexagon", "style": "filled,dashed", "fillcolor": "#f7ecec"},
    "racing": {"peripheries": "2", "color": "#c62828"},
    "batched": {"shape": "box3d"},
    "local": {"penwidth": "2", "color": "#6a1b9a"},
}
LEGEND: dict[str, str] = {
    "cpu": "CPU stage",
    "gpu": "GPU stage (green)",
    "router": "router stage (anyof, gathered joins)",
    "racing": "racing replicas (double red border)",
    "batched": "batched (3-D box)",
    "local": "runs near its store key (purple border)",
}


def stage_kinds(stage: Stage) -> list[str]:
    """The style keys of a stage: its device (or router), then racing, batched, local."""
    kinds = ["router" if stage.in_router else "gpu" if stage.gpu else "cpu"]
    kinds += [
        k for k, on in (("racing", stage.competitive), ("batched", stage.batching), ("local", stage.locality)) if on
    ]
    return kinds


def plan_graph(
    plan: Plan,
    rankdir: str = "TB",
    notes: Mapping[str, Sequence[str]] | None = None,
    text: Callable[[], str] | None = None,
) -> graphviz.Digraph:
    """The physical plan: one node per stage, styled by kind, with a legend.

    ``notes`` adds lines under a stage's label (stage name -> lines; the live view's figures);
    ``text`` is what the graph displays without ``dot`` (default: ``plan.explain()``).
    """
    g = digraph(text or plan.explain, name=f"plan_{plan.name}", graph_attr={"rankdir": rankdir, **FONT}, node_attr=FONT)
    kinds = add_plan(g, plan, "", notes)
    add_legend(g, kinds)
    return g


def add_plan(
    g: graphviz.Digraph, plan: Plan, prefix: str, notes: Mapping[str, Sequence[str]] | None = None
) -> set[str]:
    """Draw ``plan``'s source and stages into ``g`` with ids ``<prefix>s0...``; the style keys used.

    ``notes`` maps a stage name to extra label lines drawn under its traits.
    """
    used: set[str] = set()
    source = f"{prefix}source"
    g.node(source, label("source", plan.name, plan.source.schema.describe()), **NODE_STYLE["source"])
    index = {s.name: f"{prefix}s{i}" for i, s in enumerate(plan.stages)}
    for stage in plan.stages:
        ops = [f"{op.kind} {op.label}".strip() for op in stage.operators]
        style: dict[str, str] = {}
        kinds = stage_kinds(stage)
        used.update(kinds)
        for kind in kinds:
            style.update(STAGE_STYLE[kind])
        traits = "[" + ", ".join(stage_traits(stage)) + "]"
        extra = (notes or {}).get(stage.name, ())
        g.node(index[stage.name], label(stage.name, *ops, traits, *extra), **style)
    for stage in plan.stages:
        for inp in stage.inputs:
            g.edge(index.get(inp, source), index[stage.name])
    return used


def add_legend(g: graphviz.Digraph, kinds: set[str]) -> None:
    """One table node explaining the styles in ``kinds`` (always CPU and GPU)."""
    rows = []
    for kind in LEGEND:
        if kind in kinds or kind in ("cpu", "gpu"):
            style = {**STAGE_STYLE["cpu"], **STAGE_STYLE[kind]}
            fill = style.get("fillcolor", "#ffffff")
            border = style.get("color", "#000000")
            rows.append(f'<tr><td bgcolor="{fill}" color="{border}">{LEGEND[kind]}</td></tr>')
    table = '<table border="0" cellborder="1" cellspacing="2"><tr><td border="0"><b>legend</b></td></tr>'
    g.node("legend", f"<{table}{''.join(rows)}</table>>", shape="plaintext")


def dot_available() -> bool:
    """Whether the Graphviz ``dot`` program is on PATH."""
    return shutil.which("dot") is not None


def digraph(text: Callable[[], str], **attrs: Any) -> graphviz.Digraph:
    """A ``graphviz.Digraph`` (built with ``attrs``) whose notebook display shows ``text()`` and how
    to get graphs when ``dot`` is missing or fails, instead of raising."""
    graph = _fallback_digraph()(**attrs)
    graph.fallback_text = text
    return graph


@functools.cache
def _fallback_digraph() -> type:
    import graphviz

    class Digraph(graphviz.Digraph):  # the same name users see from graphviz
        """A ``graphviz.Digraph`` whose ``_repr_mimebundle_`` falls back to text instead of raising."""

        fallback_text: Callable[[], str] = staticmethod(lambda: "")

        def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> dict[str, Any]:
            if dot_available():
                try:
                    return dict(super()._repr_mimebundle_(include, exclude, **kwargs))
                except Exception:  # a broken dot install: fall back to text below
                    pass
            return mimebundle(lambda: None, self.fallback_text, f"<graph {self.name!r}>", draw=False)

    return Digraph


def mimebundle(graph: Callable[[], Any], text: Callable[[], str], short: str, draw: bool = True) -> dict[str, str]:
    """SVG of ``graph()`` when ``dot`` works (and ``draw``), else the text plan and how to get graphs;
    never raises."""
    try:
        if draw and dot_available():
            try:
                svg = graph().pipe(format="svg", encoding="utf-8")
                return {"image/svg+xml": svg, "text/plain": short}
            except Exception:  # a broken dot install: fall back to text below
                pass
        return {"text/plain": f"{text()}\n{DOT_MISSING_HINT if not dot_available() else ''}".rstrip()}
    except Exception as exc:  # a repr must never raise in a notebook
        return {"text/plain": f"{short} (could not render: {type(exc).__name__}: {exc})"}
