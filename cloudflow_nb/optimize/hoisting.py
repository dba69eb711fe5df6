"""Filter hoisting: the filters that read a fan-out run in the stage that feeds them.

A fan-out ends a fused chain, so each branch's filter would cost a call of its own per request,
even for branches that take nothing (the paper's translation pipeline routes every sentence
through one filter per language). When every reader of a stage's output is a filter, the
filters' predicates run in that stage instead: each adds a bool column (a ``Mark``), and each
branch starts with a ``Select`` of its rows, a step of the toolkit's own (no user code), which
the router applies before it calls the branch (for an output that stays on its worker, the
replica's answer names the filters that kept a row). A branch left without rows then costs no call
(:func:`~cloudflow_nb.runtime.router.empty_in_empty_out`), and a branch that was only its
filter disappears: its readers read the feeding stage through the ``Select``. A branch that keeps
other operators is named again after them.

Not hoisted: filters of a stage that races (its racers would re-run them) or runs in the router,
and of a stage whose result some non-filter also reads (it would see the bool columns).
"""

from __future__ import annotations

from cloudflow_nb.optimize.options import Optimize
from cloudflow_nb.physical import Decision, Stage, stage_name
from cloudflow_nb.plan import Filter, Map, Mark, Node, Select, StageInput
from cloudflow_nb.traversal import consumers, rewrite, walk

__all__ = ["hoist_filters"]

RULE = "fusion"


def hoist_filters(stages: list[Stage], output: str, options: Optimize) -> tuple[list[Stage], list[Decision]]:
    """``stages`` (in dependency order, the last one named ``output``) with the filters that read
    a fan-out hoisted into the stage that feeds them; a decision per hoist."""
    decisions = []
    renamed: dict[str, str] = {}
    for name in [s.name for s in stages]:
        current = {s.name: s for s in stages}
        name = renamed.get(name, name)
        if name not in current:  # a lone filter's stage, inlined into its readers
            continue
        producer = current[name]  # as earlier hoists left it
        hoisted = _hoist(producer, stages, renamed.get(output, output), options)
        if hoisted is None:
            continue
        stages, filters, renames = hoisted
        renamed.update(renames)
        names = ", ".join(f.title for f in filters)
        why = (
            f"hoisted into stage {producer.name!r}, which feeds them: each branch gets the rows its filter "
            "kept, and a branch left without rows costs no call"
        )
        why += "".join(f"; stage {old!r}, left without its filter, is now {new!r}" for old, new in renames.items())
        decisions.append(Decision(RULE, names, True, why))
    return stages, decisions


def _hoist(
    producer: Stage, stages: list[Stage], output: str, options: Optimize
) -> tuple[list[Stage], list[Filter], dict[str, str]] | None:
    """The stages with ``producer``'s readers' filters hoisted into it, the filters, and the new
    names of the readers that kept other operators (named again after what they still run)."""
    if producer.in_router or producer.name == output or _races(producer, options):
        return None
    readers = [s for s in stages if producer.name in s.inputs]
    if not readers or any(r.in_router for r in readers):
        return None
    filters: dict[tuple[int, str], Filter] = {}  # one column per (predicate, name): equal verdicts
    for reader in readers:
        parents = consumers(reader.program)
        for node in walk(reader.program):
            if isinstance(node, StageInput) and node.origin == producer.name:
                above = parents[id(node)]
                if not above or not all(isinstance(p, Filter) for p in above):
                    return None
                for f in above:
                    filters.setdefault(_key(f), f)  # type: ignore[arg-type]
    marks = _mark_columns(producer.program, len(filters))
    columns = dict(zip(filters, marks, strict=True))
    program: Node = producer.program
    for key, f in filters.items():
        detached = Filter(StageInput(0, tuple(program.schema.items()), producer.name), f.pred, f.label)
        program = Mark(program, detached, columns[key])
    fed = tuple(program.schema.items())

    def select(node: Node) -> Node | None:
        if isinstance(node, Filter) and isinstance(node.child, StageInput) and node.child.origin == producer.name:
            return Select(StageInput(node.child.slot, fed, producer.name), columns[_key(node)], marks)
        return None

    fed_by = producer.operators[-1]  # the stage's output: last of its operators in dependency order
    out: dict[str, Stage] = {}
    moved: list[Node] = []
    for reader in readers:
        here = [op for op in reader.operators if isinstance(op, Filter) and op.child is fed_by]
        kept = tuple(op for op in reader.operators if not any(op is m for m in here))
        out[reader.name] = reader.with_(program=rewrite(reader.program, select), operators=kept)
        moved += here
    out[producer.name] = producer.with_(program=program, operators=(*producer.operators, *moved))
    result = [out.get(s.name, s) for s in stages]
    for stage in [s for s in result if not s.operators]:
        inlined = _inline(stage, result, output)
        if inlined is None:
            return None
        result = inlined
    renames = {}
    for reader in readers:
        left = out[reader.name].operators
        if left and len(left) < len(reader.operators):
            taken = {s.name for s in result} - {reader.name}
            renames[reader.name] = _free_name(stage_name(left), taken)
            result = _renamed(result, reader.name, renames[reader.name])
    return result, list(filters.values()), renames


def _inline(stage: Stage, stages: list[Stage], output: str) -> list[Stage] | None:
    """``stages`` without ``stage`` (a lone ``Select``): its readers apply the select themselves."""
    readers = [s for s in stages if stage.name in s.inputs]
    if stage.name == output or not readers or any(r.in_router for r in readers):
        return None
    (source,) = stage.inputs
    selected = stage.program

    def inlined(node: Node) -> Node | None:
        if isinstance(node, StageInput) and node.origin == stage.name:
            return rewrite(selected, lambda n: _reslot(n, node.slot))
        return None

    out = []
    for s in stages:
        if s is stage:
            continue
        if s in readers:
            inputs = tuple(source if name == stage.name else name for name in s.inputs)
            s = s.with_(program=rewrite(s.program, inlined), inputs=inputs)
        out.append(s)
    return out


def _free_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3`` ..., whichever no other stage has."""
    count = 1
    free = name
    while free in taken:
        count += 1
        free = f"{name}-{count}"
    return free


def _renamed(stages: list[Stage], old: str, new: str) -> list[Stage]:
    """``stages`` with stage ``old`` called ``new``, in its readers' inputs too."""

    def origin(node: Node) -> Node | None:
        if isinstance(node, StageInput) and node.origin == old:
            return StageInput(node.slot, node.columns, new)
        return None

    return [
        s.with_(
            name=new if s.name == old else s.name,
            inputs=tuple(new if i == old else i for i in s.inputs),
            program=rewrite(s.program, origin),
        )
        for s in stages
    ]


def _reslot(node: Node, slot: int) -> Node | None:
    if isinstance(node, StageInput):
        return StageInput(slot, node.columns, node.origin)
    return None


def _races(stage: Stage, options: Optimize) -> bool:
    """Whether the competition rule will race or hedge the stage (its racers would re-run filters)."""
    racing = options.compete > 1 or options.hedging
    return racing and any(isinstance(op, Map) and op.high_variance for op in stage.operators)


def _key(f: Filter) -> tuple[int, str]:
    return id(f.pred), f.label


def _mark_columns(program: Node, count: int) -> tuple[str, ...]:
    """``count`` column names for hoisted filters' verdicts, clear of the program's columns."""
    taken = set(program.schema.names)
    names: list[str] = []
    i = 0
    while len(names) < count:
        name = f"_kept{i}"
        if name not in taken:
            names.append(name)
        i += 1
    return tuple(names)
