"""Data locality for dynamic lookups (the paper's dynamic dispatch).

A dynamic lookup's key is only known mid-request, so the plan is split there: the lookup starts
a stage whose input already holds the key column, and that stage's ``locality`` names the column
so the runtime can send each request to a worker that holds the key.
"""

from __future__ import annotations

from cloudflow_nb.optimize.options import Optimize
from cloudflow_nb.physical import Decision, Plan, Stage
from cloudflow_nb.plan import Lookup, Node
from cloudflow_nb.traversal import walk

__all__ = ["RULE", "locality_cut", "localize"]

RULE = "locality"


def locality_cut(node: Node, options: Optimize) -> str | None:
    """Why ``node`` must start a new stage for locality (``None`` when it need not)."""
    if options.locality and isinstance(node, Lookup) and node.dynamic:
        return f"starts a new stage so it can run where store[row[{node.key!r}]] lives (locality)"
    return None


def localize(plan: Plan) -> Plan:
    """Pass ``localized``: route each stage that starts with a dynamic lookup to its key's worker."""
    options: Optimize = plan.options
    lookups = [n for n in walk(plan.logical) if isinstance(n, Lookup) and n.dynamic]
    if not lookups:
        return plan.with_stages(
            plan.stages,
            Decision(RULE, f"flow {plan.name!r}", False, "no dynamic lookup to route"),
            pass_name="localized",
        )
    if not options.locality:
        off = Decision(RULE, f"flow {plan.name!r}", False, "off (Optimize(locality=False)): lookups run on any worker")
        return plan.with_stages(plan.stages, off, pass_name="localized")
    stages = list(plan.stages)
    decisions = []
    for lookup in lookups:
        index = next(i for i, s in enumerate(stages) if any(op is lookup for op in s.operators))
        stage, why = _route(stages[index], lookup)
        stages[index] = stage
        decisions.append(Decision(RULE, lookup.title, why is None, why or _routed(stage, lookup)))
    return plan.with_stages(stages, *decisions, pass_name="localized")


def _route(stage: Stage, lookup: Lookup) -> tuple[Stage, str | None]:
    """The stage routed on ``lookup.key``, or the stage unchanged and why."""
    if any(op is lookup.child for op in stage.operators):
        return stage, f"shares stage {stage.name!r} with its input, so the key is unknown when the stage starts"
    if len(stage.inputs) != 1:
        return stage, f"stage {stage.name!r} has {len(stage.inputs)} inputs; routing needs the key in its only input"
    if stage.locality is not None:
        return stage, f"stage {stage.name!r} is already routed on column {stage.locality!r}"
    return stage.with_(locality=lookup.key), None


def _routed(stage: Stage, lookup: Lookup) -> str:
    return (
        f"stage {stage.name!r} runs on a worker holding store[row[{lookup.key!r}]] "
        "(dynamic dispatch: the plan is split at the lookup)"
    )
