"""The physical plan: the logical operators grouped into stages that run as warm replicas.

A :class:`Stage` owns a small program (a plan whose leaves are :class:`StageInput` slots) and
the facts the runtime needs to serve it: GPU placement, how many replicas, whether they race,
how to batch, and which column's store key decides where it runs. :func:`build_plan` turns a
partition of the logical plan into stages; the optimizer decides the partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cloudflow_nb.errors import OptimizerError
from cloudflow_nb.plan import AnyOf, Map, Node, Source, StageInput
from cloudflow_nb.traversal import consumers, walk

__all__ = ["SOURCE", "Batching", "Decision", "Plan", "Stage", "build_plan", "stage_name"]

SOURCE = "source"


@dataclass(frozen=True)
class Batching:
    """How a stage's replicas batch concurrent requests."""

    max_batch_size: int = 16
    max_batch_wait_ms: float = 0.0


@dataclass(frozen=True)
class Decision:
    """One thing an optimizer rule did (``applied``) or declined, and why."""

    rule: str
    subject: str
    applied: bool
    reason: str

    def __str__(self) -> str:
        mark = "+" if self.applied else "-"
        return f"{mark} {self.rule}: {self.subject}: {self.reason}"


@dataclass(frozen=True, eq=False)
class Stage:
    """A group of operators served together.

    Attributes
    ----------
    name : str
        Unique within the plan; fused stages are named after their parts (``pre-resnet``).
    program : Node
        The stage's operators; its leaves are ``StageInput`` slots.
    inputs : tuple of str
        For slot ``i``, the stage that feeds it (or ``"source"``, the request).
    operators : tuple of Node
        The logical nodes this stage runs, inputs first.
    gpu : bool
        Runs only on GPU-tagged workers.
    replicas : int
        How many warm replicas serve the stage.
    competitive : bool
        Every request races all replicas (on distinct workers unless ``concurrent``); the first
        result wins.
    hedge_after : str, float or None
        Hedged calls: a second copy goes to another replica when the first has not answered
        after this percentile of the stage's recent latency (``"p90"``) or this many ms.
    batching : Batching or None
        Batch concurrent requests on each replica.
    locality : str or None
        A column holding store keys: run on a worker that holds the key of the request's first row.
    in_router : bool
        Runs in the deployment's router rather than on a replica (``anyof``, and the joins and
        unions that end a flow once gathered: :mod:`~cloudflow_nb.optimize.gathering`).
    """

    name: str
    program: Node
    inputs: tuple[str, ...]
    operators: tuple[Node, ...]
    gpu: bool = False
    replicas: int = 1
    competitive: bool = False
    batching: Batching | None = None
    locality: str | None = None
    in_router: bool = False
    hedge_after: str | float | None = None

    @property
    def concurrent(self) -> bool:
        """Whether one process may run several calls of the stage at once: its maps are all
        async or declared ``releases_gil`` (so its replicas may share a worker)."""
        maps = [op for op in self.operators if isinstance(op, Map)]
        return bool(maps) and all(m.concurrent for m in maps)

    @property
    def slots(self) -> list[StageInput]:
        """The program's input slots, in slot order."""
        found = [n for n in walk(self.program) if isinstance(n, StageInput)]
        return sorted(found, key=lambda n: n.slot)

    def with_(self, **changes: Any) -> Stage:
        """A copy with some attributes changed."""
        fields = {f: getattr(self, f) for f in self.__dataclass_fields__}
        fields.update(changes)
        return Stage(**fields)

    def __repr__(self) -> str:
        return f"<Stage {self.name!r}: {len(self.operators)} operators, replicas={self.replicas}, gpu={self.gpu}>"


@dataclass(frozen=True, eq=False)
class Plan:
    """A flow's physical plan: stages in dependency order, the last one producing the result."""

    name: str
    logical: Node
    stages: tuple[Stage, ...]
    options: Any = None
    decisions: tuple[Decision, ...] = field(default=())
    pass_name: str = "placed"

    @property
    def source(self) -> Source:
        """The flow's input."""
        return next(n for n in walk(self.logical) if isinstance(n, Source))

    @property
    def output(self) -> Stage:
        """The stage whose result is the flow's result."""
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} (stages: {[s.name for s in self.stages]})")

    def with_stages(self, stages: Sequence[Stage], *decisions: Decision, pass_name: str | None = None) -> Plan:
        """A copy with new stages and more decisions."""
        return Plan(
            self.name,
            self.logical,
            tuple(stages),
            self.options,
            self.decisions + decisions,
            pass_name or self.pass_name,
        )

    def explain(self) -> str:
        """Deterministic text: the stages and what each optimizer rule did or declined."""
        from cloudflow_nb.explain import explain_plan

        return explain_plan(self)

    def show_graph(self) -> Any:
        """A ``graphviz.Digraph`` of the stages."""
        from cloudflow_nb.viz import plan_graph

        return plan_graph(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        from cloudflow_nb.viz import mimebundle

        return mimebundle(self.show_graph, self.explain, repr(self))

    def __repr__(self) -> str:
        return f"<cf.Plan {self.name!r}: {len(self.stages)} stages ({', '.join(s.name for s in self.stages)})>"


def build_plan(
    name: str,
    logical: Node,
    groups: Sequence[Sequence[Node]],
    stage_names: Sequence[str] | None = None,
) -> Plan:
    """Make one stage per group of logical nodes (the source is never in a group).

    Each group must have exactly one node read outside it (or the plan's root): its output.
    Stages come out in dependency order; attributes other than ``in_router`` are left at their
    defaults for the optimizer's later passes to set.
    """
    order = {id(n): i for i, n in enumerate(walk(logical))}
    group_of: dict[int, int] = {}
    for g, members in enumerate(groups):
        for node in members:
            if isinstance(node, Source):
                raise OptimizerError("the source cannot be part of a stage")
            if id(node) in group_of:
                raise OptimizerError(f"{node.title} is in two stages")
            group_of[id(node)] = g
    missing = [n for n in walk(logical) if not isinstance(n, Source) and id(n) not in group_of]
    if missing:
        raise OptimizerError(f"{missing[0].title} is in no stage")

    readers = consumers(logical)
    outputs: list[Node] = []
    for g, members in enumerate(groups):
        used_outside = [n for n in members if n is logical or any(group_of[id(c)] != g for c in readers[id(n)])]
        if len(used_outside) != 1:
            raise OptimizerError(f"stage {g} must have exactly one output, has {len(used_outside)}")
        outputs.append(used_outside[0])

    names = _unique(list(stage_names) if stage_names else [stage_name(m) for m in groups])
    produced_by = {id(out): names[g] for g, out in enumerate(outputs)}
    stages: dict[int, Stage] = {}
    for g, members in enumerate(groups):
        members = sorted(members, key=lambda n: order[id(n)])
        member_ids = {id(n) for n in members}
        local: dict[int, Node] = {}
        boundary: list[Node] = []
        for node in members:
            kids = []
            for child in node.children:
                if id(child) in member_ids:
                    kids.append(local[id(child)])
                    continue
                if id(child) not in local:
                    boundary.append(child)
                    origin = produced_by.get(id(child), SOURCE)
                    local[id(child)] = StageInput(len(boundary) - 1, tuple(child.schema.items()), origin)
                kids.append(local[id(child)])
            local[id(node)] = node.replace_children(tuple(kids)) if node.children else node
        stages[g] = Stage(
            name=names[g],
            program=local[id(outputs[g])],
            inputs=tuple(produced_by.get(id(b), SOURCE) for b in boundary),
            operators=tuple(members),
            in_router=isinstance(outputs[g], AnyOf),
        )
    ordered = [stages[g] for g in sorted(stages, key=lambda g: order[id(outputs[g])])]
    return Plan(name, logical, tuple(ordered), pass_name="logical")


def stage_name(members: Sequence[Node]) -> str:
    """A stage named from its parts: ``pre-resnet``; lambdas read as ``lambda`` (not yet unique)."""
    return "-".join(_part_name(n) for n in members) if members else "stage"


def _part_name(node: Node) -> str:
    if node.kind not in ("map", "filter"):
        return node.kind
    return "lambda" if node.label.startswith("<lambda") else node.label


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        count = seen.get(n, 0) + 1
        seen[n] = count
        out.append(n if count == 1 else f"{n}-{count}")
    return out
