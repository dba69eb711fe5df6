"""Batching: a stage whose maps all batch collects concurrent requests into one call."""

from __future__ import annotations

from cloudflow_nb.optimize.options import Optimize
from cloudflow_nb.physical import Batching, Decision, Plan, Stage
from cloudflow_nb.plan import Map

__all__ = ["RULE", "batch"]

RULE = "batching"


def batch(plan: Plan) -> Plan:
    """Pass ``batched``: give ``Batching`` to stages with a batching map and no non-batching map.

    Operators other than maps run per request inside a batch, so they never stop batching; a
    map without ``batching=True`` takes one row at a time, so a stage holding one does not batch.
    """
    options: Optimize = plan.options
    stages = []
    decisions = []
    for stage in plan.stages:
        maps = [op for op in stage.operators if isinstance(op, Map)]
        if any(m.batching for m in maps):
            stage, decision = _batch(stage, maps, options)
            decisions.append(decision)
        stages.append(stage)
    if not decisions:
        decisions.append(Decision(RULE, f"flow {plan.name!r}", False, "no operator is marked batching"))
    return plan.with_stages(stages, *decisions, pass_name="batched")


def _batch(stage: Stage, maps: list[Map], options: Optimize) -> tuple[Stage, Decision]:
    if not options.batching:
        return stage, Decision(RULE, stage.name, False, "off (Optimize(batching=False)): one request per call")
    single = [m for m in maps if not m.batching]
    if single:
        why = f"declined: {single[0].title} takes one row at a time (every map of a stage must batch)"
        return stage, Decision(RULE, stage.name, False, why)
    policy = Batching(options.max_batch_size, options.max_batch_wait_ms)
    wait = f"waiting at most {policy.max_batch_wait_ms:g} ms" if policy.max_batch_wait_ms else "what queued meanwhile"
    why = f"up to {policy.max_batch_size} requests per call, {wait}"
    return stage.with_(batching=policy), Decision(RULE, stage.name, True, why)
