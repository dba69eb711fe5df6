"""Competitive execution: race replicas of high-variance stages and keep the first result."""

from __future__ import annotations

from cloudflow_nb.optimize.options import Optimize
from cloudflow_nb.physical import Decision, Plan, Stage
from cloudflow_nb.plan import Map

__all__ = ["RULE", "compete"]

RULE = "competition"


def compete(plan: Plan) -> Plan:
    """Pass ``competed``: a stage with a ``high_variance`` map races ``Optimize.compete`` replicas.

    The race happens inside the stage (replicas on distinct workers, first result wins), so it
    works whatever reads the stage: one consumer, a fan-out or a join.
    """
    options: Optimize = plan.options
    stages = []
    decisions = []
    for stage in plan.stages:
        racers = [op for op in stage.operators if isinstance(op, Map) and op.high_variance]
        if racers:
            stage, decision = _race(stage, racers, options, _readers(plan, stage))
            decisions.append(decision)
        stages.append(stage)
    if not decisions:
        decisions.append(Decision(RULE, f"flow {plan.name!r}", False, "no operator is marked high_variance"))
    return plan.with_stages(stages, *decisions, pass_name="competed")


def _readers(plan: Plan, stage: Stage) -> int:
    return sum(s.inputs.count(stage.name) for s in plan.stages) or 1


def _race(stage: Stage, racers: list[Map], options: Optimize, readers: int) -> tuple[Stage, Decision]:
    names = ", ".join(r.title for r in racers)
    if options.compete < 2:
        why = f"off (Optimize(compete=1)): {names} runs one replica"
        return stage, Decision(RULE, stage.name, False, why)
    others = len(stage.operators) - len(racers)
    company = f" with {others} fused operators, all re-run per replica" if others else ""
    why = (
        f"races {options.compete} replicas on distinct workers for {names}{company}; "
        f"the first result feeds its {readers} reader{'s' if readers != 1 else ''}"
    )
    return stage.with_(competitive=True, replicas=options.compete), Decision(RULE, stage.name, True, why)
