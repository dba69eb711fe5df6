"""Deterministic text renderings of logical and physical plans."""

from __future__ import annotations

from functools import singledispatch

from cloudflow_nb.physical import Plan, Stage
from cloudflow_nb.plan import Agg, Explode, Join, Lookup, Map, Node, Source, StageInput
from cloudflow_nb.table import Schema, type_name
from cloudflow_nb.traversal import walk

__all__ = [
    "explain_decisions",
    "explain_logical",
    "explain_plan",
    "explain_stages",
    "node_ids",
    "schema_delta",
    "stage_traits",
]


def node_ids(root: Node) -> dict[int, str]:
    """Stable ids ``n0, n1, ...`` in dependency order."""
    return {id(n): f"n{i}" for i, n in enumerate(walk(root))}


def schema_delta(node: Node) -> str:
    """The output schema; for one-input operators that keep their input columns, only the columns
    they add (``+name``) or rewrite (``~name``). Aggregates and explodes, which start new rows, show
    their whole schema."""
    children = node.children
    if len(children) == 1 and not isinstance(node, (Agg, Explode)):
        before: Schema = children[0].schema
        written = set(_written(node))
        parts = [
            f"{'+' if k not in before else '~'}{k}: {type_name(v)}"
            for k, v in node.schema.items()
            if k not in before or before[k] is not v or k in written
        ]
        return ", ".join(parts) or "same columns"
    return node.schema.describe()


def _written(node: Node) -> tuple[str, ...]:
    if isinstance(node, (Map, Explode)):
        return node.output_names
    if isinstance(node, Lookup):
        return (node.target,)
    return ()


@singledispatch
def flags(node: Node) -> list[str]:
    """Extra words shown after an operator (its options)."""
    return []


@flags.register
def _(node: Map) -> list[str]:
    out = []
    if node.is_class:
        out.append("class")
    if node.is_async:
        out.append("async")
    out += [f for f in ("batching", "gpu", "high_variance", "releases_gil") if getattr(node, f)]
    return out


@flags.register
def _(node: Lookup) -> list[str]:
    out = ["dynamic" if node.dynamic else "static"]
    if node.into:
        out.append(f"into={node.into}")
    return out


@flags.register
def _(node: Join) -> list[str]:
    return []


def _line(node: Node, ids: dict[int, str]) -> str:
    args = ", ".join(ids[id(c)] for c in node.children)
    head = f"{ids[id(node)]} = {node.kind}"
    if node.label and not isinstance(node, (Source, StageInput)):
        head += f" {node.label}"
    elif isinstance(node, (Source, StageInput)):
        head += f" {node.label!r}"
    if args:
        head += f" ({args})"
    extra = flags(node)
    if extra:
        head += " [" + ", ".join(extra) + "]"
    return f"{head}  -> {schema_delta(node)}"


def explain_logical(root: Node) -> str:
    """The logical plan, one operator per line in dependency order.

    Examples
    --------
    >>> import cloudflow_nb as cf
    >>> print(cf.Flow("f", x=int).filter(bool, name="nonzero").explain(optimized=False))
    logical plan of flow 'f'
      n0 = source 'f'  -> qid: int, x: int
      n1 = filter nonzero (n0)  -> same columns
    output: qid: int, x: int
    """
    ids = node_ids(root)
    source = next(n for n in walk(root) if isinstance(n, Source))
    lines = [f"logical plan of flow {source.name!r}"]
    lines += ["  " + _line(n, ids) for n in walk(root)]
    lines.append(f"output: {root.schema.describe()}")
    return "\n".join(lines)


def stage_traits(stage: Stage) -> list[str]:
    """The runtime facts of a stage, as short words."""
    out = ["gpu" if stage.gpu else "cpu"]
    if stage.in_router:
        out = ["router"]
    if stage.competitive:
        out.append(f"race x{stage.replicas}")
    elif stage.hedge_after is not None:
        after = stage.hedge_after
        out.append(f"hedge x{stage.replicas} after {after if isinstance(after, str) else f'{after:g}ms'}")
    elif stage.replicas != 1:
        out.append(f"replicas={stage.replicas}")
    if stage.batching:
        wait = stage.batching.max_batch_wait_ms
        out.append(f"batch<={stage.batching.max_batch_size}" + (f"/{wait:g}ms" if wait else ""))
    if stage.locality:
        out.append(f"near store[{stage.locality}]")
    return out


def explain_plan(plan: Plan) -> str:
    """The physical plan: stages in order with their operators, then each rule's decisions.

    Examples
    --------
    >>> import cloudflow_nb as cf
    >>> flow = cf.Flow("f", x=int).map(abs, names="x").map(str, names="y")
    >>> print(flow.explain(stage="fused"))
    physical plan of flow 'f' (1 stage, after pass 'fused')
      s0 abs-str <- source [cpu]
           map abs
           map str
    output: abs-str: qid: int, x: any, y: any
    fusion:
      + abs-str: fused a linear chain of 2 operators: intermediate tables stay in memory
    """
    count = len(plan.stages)
    lines = [
        f"physical plan of flow {plan.name!r} ({count} stage{'s' if count != 1 else ''}, after pass {plan.pass_name!r})"
    ]
    lines += explain_stages(plan)
    lines.append(f"output: {plan.output.name}: {plan.output.program.schema.describe()}")
    lines += explain_decisions(plan)
    return "\n".join(lines)


def explain_stages(plan: Plan) -> list[str]:
    """Each stage with its inputs and traits, then its operators, one per line."""
    lines = []
    for i, stage in enumerate(plan.stages):
        inputs = ", ".join(stage.inputs)
        lines.append(f"  s{i} {stage.name} <- {inputs} [{', '.join(stage_traits(stage))}]")
        lines += [f"       {op.kind} {op.label}".rstrip() for op in stage.operators]
    return lines


def explain_decisions(plan: Plan) -> list[str]:
    """One section per rule, in pass order: ``+`` what it did, ``-`` what it declined, and why."""
    by_rule: dict[str, list[str]] = {}
    for d in plan.decisions:
        by_rule.setdefault(d.rule, []).append(f"  {'+' if d.applied else '-'} {d.subject}: {d.reason}")
    return [line for rule, entries in by_rule.items() for line in (f"{rule}:", *entries)]
