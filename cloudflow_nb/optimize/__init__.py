"""The optimizer: logical plan -> physical ``Plan``, in named, inspectable passes."""

from __future__ import annotations

from cloudflow_nb.errors import OptimizerError
from cloudflow_nb.optimize.options import Optimize
from cloudflow_nb.physical import Batching, Plan, build_plan
from cloudflow_nb.plan import Map, Node, Source
from cloudflow_nb.traversal import walk

__all__ = ["Optimize", "optimize", "resolve_options"]


def optimize(name: str, root: Node, options: Optimize | None = None) -> Plan:
    """One stage per operator, with each map's own GPU, racing and batching flags."""
    options = options or Optimize()
    groups = [[n] for n in walk(root) if not isinstance(n, Source)]
    plan = build_plan(name, root, groups)
    stages = []
    for stage in plan.stages:
        (op,) = stage.operators
        if isinstance(op, Map):
            stage = stage.with_(
                gpu=op.gpu and options.gpu,
                replicas=options.compete if op.high_variance else 1,
                competitive=op.high_variance and options.compete > 1,
                batching=Batching(options.max_batch_size, options.max_batch_wait_ms)
                if op.batching and options.batching
                else None,
            )
        stages.append(stage)
    return Plan(name, root, tuple(stages), options)


def resolve_options(options: Optimize | bool | None) -> Optimize:
    """``None``/``True`` -> defaults, ``False`` -> no rewrites, an ``Optimize`` as given."""
    if options is None or options is True:
        return Optimize()
    if options is False:
        return Optimize.none()
    if isinstance(options, Optimize):
        return options
    raise OptimizerError(f"optimize: expected True, False or a cf.Optimize, got {type(options).__name__}")
