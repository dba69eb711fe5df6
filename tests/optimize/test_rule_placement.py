"""Placement: GPU stages on GPU-tagged workers, CPU stages preferably elsewhere, anyof in the router."""

from __future__ import annotations

from snapshots import flows

import cloudflow_nb as cf


def placed(flow: cf.Flow, **options) -> cf.Plan:
    return cf.optimize_until(flow, "placed", cf.Optimize(**options))


def decisions(plan: cf.Plan) -> list[str]:
    return [str(d) for d in plan.decisions if d.rule == "placement"]


def test_gpu_stages_are_marked_and_cpu_stages_listed():
    plan = placed(flows.cascade())
    assert {s.name: s.gpu for s in plan.stages} == {
        "preprocess": False,
        "resnet": True,
        "unsure-inception": True,
        "join-pick_best": False,
    }
    assert decisions(plan) == [
        "+ placement: resnet: on GPU-tagged workers only (map 'resnet' is gpu)",
        "+ placement: unsure-inception: on GPU-tagged workers only (map 'inception' is gpu)",
        "+ placement: preprocess, join-pick_best: CPU stages: preferably on CPU workers, keeping GPUs for GPU stages",
    ]


def test_gpu_placement_off():
    plan = placed(flows.cascade(), gpu=False)
    assert not any(s.gpu for s in plan.stages)
    assert "- placement: preprocess-resnet: off (Optimize(gpu=False)): map 'resnet' runs on any worker" in decisions(
        plan
    )


def test_the_router_stage_runs_in_the_router():
    plan = placed(flows.racing_router())
    assert plan.stage("anyof").in_router
    assert not plan.stage("anyof").gpu
    assert "+ placement: anyof: runs in the deployment's router, not on a worker" in decisions(plan)


def test_unoptimized_plans_still_place_gpu_operators():
    assert cf.Flow.optimize(flows.cascade(), False).stage("resnet").gpu
