"""``cf.compare``: the plan before and after optimization, side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloudflow_nb.errors import OptimizerError
from cloudflow_nb.explain import explain_decisions, explain_stages
from cloudflow_nb.flow import Flow
from cloudflow_nb.optimize import Optimize, resolve_options

if TYPE_CHECKING:
    import graphviz

    from cloudflow_nb.physical import Plan

__all__ = ["Comparison", "compare"]


def compare(flow: Flow, options: Optimize | bool | None = None) -> Comparison:
    """The flow's unoptimized plan next to its optimized one.

    Parameters
    ----------
    flow : Flow
        The flow to optimize.
    options : Optimize, optional
        The optimizer's options for the "after" plan (default ``cf.Optimize()``).

    Examples
    --------
    >>> import cloudflow_nb as cf
    >>> flow = cf.Flow("f", x=int).map(abs, names="x").map(str, names="y")
    >>> cf.compare(flow)
    <cf.compare 'f': 2 stages -> 1 stage>
    """
    if not isinstance(flow, Flow):
        raise OptimizerError(f"compare: expected a cf.Flow, got {type(flow).__name__}")
    return Comparison(flow.optimize(False), flow.optimize(resolve_options(options)))


class Comparison:
    """Two physical plans of one flow: ``before`` (no rewrites) and ``after`` (optimized).

    ``str()`` gives the text side by side; in a notebook it renders as one graph with the
    clusters ``cluster_before`` and ``cluster_after``.
    """

    def __init__(self, before: Plan, after: Plan) -> None:
        self.before = before
        self.after = after

    def text(self) -> str:
        """Both stage lists in two columns, then what the optimizer did and why."""
        left = ["before (no rewrites)", *explain_stages(self.before)]
        right = ["after (optimized)", *explain_stages(self.after)]
        width = max(len(line) for line in left)
        rows = [
            f"{a.ljust(width)} | {b}".rstrip()
            for a, b in zip(
                left + [""] * (len(right) - len(left)), right + [""] * (len(left) - len(right)), strict=True
            )
        ]
        head = f"compare flow {self.before.name!r}: {_count(self.before)} -> {_count(self.after)}"
        return "\n".join([head, *rows, *explain_decisions(self.after)])

    def graph(self, rankdir: str = "TB") -> graphviz.Digraph:
        """One ``graphviz.Digraph``: the plan before (left) and after (right), and a legend."""
        from cloudflow_nb.viz import FONT, add_legend, add_plan, digraph

        g = digraph(
            self.text, name=f"compare_{self.before.name}", graph_attr={"rankdir": rankdir, **FONT}, node_attr=FONT
        )
        kinds: set[str] = set()
        for key, title, plan in (
            ("before", "before: no rewrites", self.before),
            ("after", "after: optimized", self.after),
        ):
            with g.subgraph(name=f"cluster_{key}") as sub:
                sub.attr(label=f"{title} ({_count(plan)})", style="rounded", color="#9e9e9e")
                kinds |= add_plan(sub, plan, f"{key}_")
        add_legend(g, kinds)
        return g

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        from cloudflow_nb.viz import mimebundle

        return mimebundle(self.graph, self.text, repr(self))

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return f"<cf.compare {self.before.name!r}: {_count(self.before)} -> {_count(self.after)}>"


def _count(plan: Plan) -> str:
    n = len(plan.stages)
    return f"{n} stage{'s' if n != 1 else ''}"
