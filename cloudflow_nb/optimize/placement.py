"""Placement: GPU stages only on GPU-tagged workers, CPU stages preferably elsewhere."""

from __future__ import annotations

from cloudflow_nb.optimize.options import Optimize
from cloudflow_nb.physical import Decision, Plan
from cloudflow_nb.plan import Map

__all__ = ["RULE", "place"]

RULE = "placement"


def place(plan: Plan) -> Plan:
    """Pass ``placed``: set ``Stage.gpu`` for stages holding a ``gpu`` map."""
    options: Optimize = plan.options
    stages = []
    decisions = []
    cpu = []
    for stage in plan.stages:
        gpu_ops = [op for op in stage.operators if isinstance(op, Map) and op.gpu]
        if stage.in_router:
            decisions.append(Decision(RULE, stage.name, True, "runs in the deployment's router, not on a worker"))
        elif gpu_ops and options.gpu:
            stage = stage.with_(gpu=True)
            decisions.append(
                Decision(RULE, stage.name, True, f"on GPU-tagged workers only ({gpu_ops[0].title} is gpu)")
            )
        elif gpu_ops:
            why = f"off (Optimize(gpu=False)): {gpu_ops[0].title} runs on any worker"
            decisions.append(Decision(RULE, stage.name, False, why))
        else:
            cpu.append(stage.name)
        stages.append(stage)
    if cpu:
        decisions.append(
            Decision(RULE, ", ".join(cpu), True, "CPU stages: preferably on CPU workers, keeping GPUs for GPU stages")
        )
    return plan.with_stages(stages, *decisions, pass_name="placed")
