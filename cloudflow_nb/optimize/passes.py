"""The optimizer's named passes, run in order; ``optimize_until`` stops after any of them."""

from __future__ import annotations

from collections.abc import Callable

from cloudflow_nb.errors import OptimizerError
from cloudflow_nb.flow import Flow
from cloudflow_nb.optimize.batching import batch
from cloudflow_nb.optimize.competition import compete
from cloudflow_nb.optimize.fusion import fuse
from cloudflow_nb.optimize.gathering import gather
from cloudflow_nb.optimize.locality import localize
from cloudflow_nb.optimize.options import Optimize
from cloudflow_nb.optimize.placement import place
from cloudflow_nb.physical import Plan, build_plan
from cloudflow_nb.plan import Node, Source
from cloudflow_nb.traversal import walk

__all__ = ["PASSES", "logical_plan", "optimize", "optimize_until"]

Pass = Callable[[Plan], Plan]

_RULES: dict[str, Pass] = {
    "fused": fuse,
    "gathered": gather,
    "competed": compete,
    "batched": batch,
    "placed": place,
    "localized": localize,
}
PASSES: tuple[str, ...] = ("logical", *_RULES)


def logical_plan(name: str, root: Node, options: Optimize) -> Plan:
    """Pass ``logical``: one stage per operator, nothing decided yet."""
    plan = build_plan(name, root, [[n] for n in walk(root) if not isinstance(n, Source)])
    return Plan(name, root, plan.stages, options, pass_name="logical")


def optimize(name: str, root: Node, options: Optimize | None = None) -> Plan:
    """The physical plan of the flow ending at ``root``, after every pass."""
    return _run(logical_plan(name, root, options or Optimize()), PASSES[-1])


def optimize_until(target: Flow | Plan, stage: str, options: Optimize | None = None) -> Plan:
    """The plan after pass ``stage`` (one of ``PASSES``), to render or test each pass alone.

    Parameters
    ----------
    target : Flow or Plan
        A flow, or a plan from an earlier pass (continued from where it stopped).
    stage : str
        The last pass to run.
    options : Optimize, optional
        Defaults to the plan's own options, or ``Optimize()`` for a flow.

    Examples
    --------
    >>> import cloudflow_nb as cf
    >>> flow = cf.Flow("f", x=int).map(abs, names="x").map(str, names="y")
    >>> [s.name for s in cf.optimize_until(flow, "logical").stages]
    ['abs', 'str']
    >>> [s.name for s in cf.optimize_until(flow, "fused").stages]
    ['abs-str']
    """
    if stage not in PASSES:
        raise OptimizerError(f"optimize_until: unknown pass {stage!r} (must be one of {', '.join(PASSES)})")
    if isinstance(target, Flow):
        return _run(logical_plan(target.name, target.node, options or Optimize()), stage)
    if not isinstance(target, Plan):
        raise OptimizerError(f"optimize_until: expected a cf.Flow or a cf.Plan, got {type(target).__name__}")
    options = options or target.options or Optimize()
    done = PASSES.index(target.pass_name) if target.pass_name in PASSES else len(PASSES)
    if options != target.options or done > PASSES.index(stage):
        target = logical_plan(target.name, target.logical, options)
    return _run(target, stage)


def _run(plan: Plan, stage: str) -> Plan:
    start = PASSES.index(plan.pass_name) + 1
    for name in PASSES[start : PASSES.index(stage) + 1]:
        plan = _RULES[name](plan)
    return plan
