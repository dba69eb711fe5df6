"""Competitive execution: race replicas of high-variance stages and keep the first result."""

from __future__ import annotations

from cloudflow_nb.optimize.options import Optimize
from cloudflow_nb.physical import Decision, Plan, Stage
from cloudflow_nb.plan import Map

__all__ = ["RULE", "compete"]

RULE = "competition"


def compete(plan: Plan) -> Plan:
    """Pass ``competed``: a stage with a ``high_variance`` map races ``Optimize.compete`` replicas.

    The race happens inside the stage (first result wins), so it works whatever reads the stage:
    one consumer, a fan-out or a join. A plain sync stage's racers need a worker each; an async
    stage's or a ``releases_gil`` one's may share workers. With ``Optimize.hedge_after`` the stage
    is hedged instead: a second copy only when the first call is slow.
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
    if options.hedging:
        return _hedge(stage, names, options)
    if options.compete < 2:
        why = f"off (Optimize(compete=1)): {names} runs one replica"
        return stage, Decision(RULE, stage.name, False, why)
    k = options.compete
    others = len(stage.operators) - len(racers)
    company = f" with {others} fused operators, all re-run per replica" if others else ""
    feeds = f"the first result feeds its {readers} reader{'s' if readers != 1 else ''}"
    if stage.concurrent:
        why = (
            f"races {k} replicas for {names}{company}; {feeds}; {_concurrent_kind(stage)}: racers may share "
            "a worker, so all race whatever the worker count, and a loser is cancelled and frees its slot at once"
        )
    else:
        why = (
            f"races {k} replicas on distinct workers for {names}{company}; {feeds}; a sync stage needs a "
            f"worker per racer (fewer than {k} workers race fewer; make it async or declare "
            "releases_gil=True to share workers), and a loser runs to its end before its replica races again"
        )
    return stage.with_(competitive=True, replicas=k), Decision(RULE, stage.name, True, why)


def _hedge(stage: Stage, names: str, options: Optimize) -> tuple[Stage, Decision]:
    after = options.hedge_after
    when = f"its own recent {after} latency" if isinstance(after, str) else f"{after:g} ms"
    replicas = max(2, options.compete)
    why = (
        f"hedges {names} over {replicas} replicas: a call goes to one, and a second copy to another only "
        f"when the first has not answered after {when}; the first answer wins, the other is cancelled"
    )
    return stage.with_(replicas=replicas, hedge_after=after), Decision(RULE, stage.name, True, why)


def _concurrent_kind(stage: Stage) -> str:
    maps = [op for op in stage.operators if isinstance(op, Map)]
    return "async" if all(m.is_async for m in maps) else "it runs calls concurrently (async or releases_gil)"
