"""Gathering: joins and unions at the end of the flow run in the router, a hop less each.

A flow's result comes back to the deployment's router whatever runs last. When the last stages
only combine their inputs' rows (joins and unions: the toolkit's own operators, no user code),
the router can combine them itself: their inputs come back to it instead of their result, and
each such stage costs no call. Fan-in pipelines (the paper's translation gathers one branch per
language with outer joins) save a hop per join on every request.

A stage is gathered only when its result is the flow's or is read in the router alone (by a
gathered stage or an ``anyof``), and its inputs are read in the router alone: data read by a
worker never detours through the router.
"""

from __future__ import annotations

from cloudflow_nb.optimize.options import Optimize
from cloudflow_nb.physical import Decision, Plan, Stage
from cloudflow_nb.plan import Join, Select, StageInput, Union
from cloudflow_nb.traversal import walk

__all__ = ["RULE", "gather"]

RULE = "gathering"


def gather(plan: Plan) -> Plan:
    """Pass ``gathered``: run the joins and unions that end the flow in the router."""
    options: Optimize = plan.options
    combining = [s.name for s in plan.stages if not s.in_router and combines_only(s)]
    tail = _combining_tail(plan, set(combining))
    decisions = []
    if not combining:
        decisions.append(Decision(RULE, f"flow {plan.name!r}", False, "no stage only joins or unions its inputs"))
    elif tail and options.gather:
        why = "in the router, no call per request: the inputs come back to it instead of the result"
        decisions.append(Decision(RULE, _names(combining, tail), True, why))
    elif tail:
        why = "off (Optimize(gather=False)): each runs as a call on a worker"
        decisions.append(Decision(RULE, _names(combining, tail), False, why))
    if set(combining) - tail:
        why = "a worker reads its result or its inputs: it stays on a worker (no detour through the router)"
        decisions.append(Decision(RULE, _names(combining, set(combining) - tail), False, why))
    if options.gather:
        stages = [s.with_(in_router=True) if s.name in tail else s for s in plan.stages]
    else:
        stages = list(plan.stages)
    return plan.with_stages(stages, *decisions, pass_name="gathered")


def _names(order: list[str], chosen: set[str]) -> str:
    return ", ".join(n for n in order if n in chosen)


def combines_only(stage: Stage) -> bool:
    """Whether ``stage`` only joins or unions its inputs (no user function, no lookup), perhaps
    after selecting the rows of hoisted filters."""
    nodes = list(walk(stage.program))
    return any(isinstance(n, (Join, Union)) for n in nodes) and all(
        isinstance(n, (Join, Union, Select, StageInput)) for n in nodes
    )


def _combining_tail(plan: Plan, combining: set[str]) -> set[str]:
    """The largest set of ``combining`` stages that only the router reads (the output's reader
    is the router) and whose inputs only the router reads."""
    readers: dict[str, set[str]] = {s.name: set() for s in plan.stages}
    for stage in plan.stages:
        for name in stage.inputs:
            if name in readers:
                readers[name].add(stage.name)
    routed = {s.name for s in plan.stages if s.in_router}
    tail = combining
    while True:
        here = routed | tail
        keep = {
            s.name
            for s in plan.stages
            if s.name in tail
            and (s is plan.output or (bool(readers[s.name]) and readers[s.name] <= here))
            and all(readers[i] <= here for i in s.inputs if i in readers)
        }
        if keep == tail:
            return tail
        tail = keep
