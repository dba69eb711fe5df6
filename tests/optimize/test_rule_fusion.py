"""Fusion: which operators share a stage, and the reasons recorded for every boundary kept."""

from __future__ import annotations

import pytest
from snapshots import flows

import cloudflow_nb as cf
from cloudflow_nb.plan import Source
from cloudflow_nb.traversal import walk


def fused(flow: cf.Flow, **options) -> cf.Plan:
    return cf.optimize_until(flow, "fused", cf.Optimize(**options))


def names(plan: cf.Plan) -> list[str]:
    return [s.name for s in plan.stages]


def reasons(plan: cf.Plan, rule: str = "fusion") -> list[str]:
    return [str(d) for d in plan.decisions if d.rule == rule]


def inc(row):
    return row["x"] + 1


def test_a_linear_chain_becomes_one_stage_named_from_its_parts():
    plan = fused(flows.chain(3))
    assert names(plan) == ["m1-m2-m3"]
    (stage,) = plan.stages
    assert stage.operators == tuple(n for n in walk(plan.logical) if not isinstance(n, Source))
    assert stage.inputs == ("source",)
    assert reasons(plan) == [
        "+ fusion: m1-m2-m3: fused a linear chain of 3 operators: intermediate tables stay in memory"
    ]


def test_fusion_off_keeps_one_stage_per_operator():
    plan = fused(flows.chain(3), fusion=False)
    assert names(plan) == ["m1", "m2", "m3"]
    assert reasons(plan) == ["- fusion: flow 'chain': off (Optimize(fusion=False)): one stage per operator"]


def test_a_chain_ends_at_a_fan_out_and_never_crosses_a_fan_in():
    flow = cf.Flow("fan", x=int)
    top = flow.map(inc, names={"x": int}, name="a").map(inc, names={"x": int}, name="b")
    left = top.map(inc, names={"y": int}, name="c")
    right = top.map(inc, names={"z": int}, name="d").map(inc, names={"z": int}, name="e")
    plan = fused(left.join(right).map(inc, names={"w": int}, name="after"))
    assert names(plan) == ["a-b", "c", "d-e", "join-after"]
    assert plan.stage("join-after").inputs == ("c", "d-e")
    assert "- fusion: map 'b': fan-out to 2 operators ends its chain" in reasons(plan)
    assert "- fusion: join 'inner on qid': fan-in of 2 inputs starts a new stage" in reasons(plan)


def test_union_is_a_fan_in():
    flow = cf.Flow("u", x=int)
    plan = fused(flow.map(inc, names={"x": int}, name="a").union(flow).map(inc, names={"y": int}, name="b"))
    assert names(plan) == ["a", "union-b"]


def test_anyof_stays_alone_in_a_router_stage():
    plan = fused(flows.racing_router(), compete=1)
    assert names(plan) == ["fast", "slow", "anyof", "after"]
    assert [s.in_router for s in plan.stages] == [False, False, True, False]
    assert "- fusion: map 'after': reads an anyof, which runs alone in the deployment's router" in reasons(plan)


def test_fusion_stops_at_a_cpu_gpu_boundary_and_says_why():
    plan = fused(flows.cascade())
    assert names(plan) == ["preprocess", "resnet", "unsure-inception", "join-pick_best"]
    assert (
        "- fusion: map 'resnet': not fused with map 'preprocess': CPU/GPU boundary (map 'preprocess' runs on "
        "CPU workers, map 'resnet' needs a GPU; fusing would tie CPU work to scarce GPU workers)"
    ) in reasons(plan)


def test_without_gpu_placement_there_is_no_boundary():
    assert names(fused(flows.cascade(), gpu=False)) == ["preprocess-resnet", "unsure-inception", "join-pick_best"]


def test_device_neutral_operators_fuse_with_gpu_maps():
    flow = cf.Flow("g", x=int).map(inc, names={"x": int}, gpu=True, name="model").filter(bool, name="keep")
    assert names(fused(flow)) == ["model-keep"]


def test_a_high_variance_map_stays_alone_while_racing():
    flow = cf.Flow("hv", x=int).map(inc, names={"x": int}, name="a")
    flow = flow.map(inc, names={"x": int}, high_variance=True, name="slow").map(inc, names={"x": int}, name="b")
    plan = fused(flow, compete=3)
    assert names(plan) == ["a", "slow", "b"]
    assert (
        "- fusion: map 'slow': not fused with map 'a': map 'slow' is high_variance and stays alone, so each of "
        "its 3 racing replicas re-runs only it, not its neighbours"
    ) in reasons(plan)
    assert names(fused(flow, compete=1)) == ["a-slow-b"]


def test_a_dynamic_lookup_starts_a_stage_while_locality_is_on():
    plan = fused(flows.recommender())
    assert names(plan) == ["lookup-category", "lookup-top5"]
    assert (
        "- fusion: lookup 'row[category]': starts a new stage so it can run where "
        "store[row['category']] lives (locality)"
    ) in reasons(plan)
    assert names(fused(flows.recommender(), locality=False)) == ["lookup-category-lookup-top5"]


def test_whole_flow_fusion_makes_one_stage_across_the_gpu_boundary():
    plan = fused(flows.cascade(), whole=True)
    assert names(plan) == ["preprocess-resnet-unsure-inception-join-pick_best"]
    assert reasons(plan) == [
        "+ fusion: preprocess-resnet-unsure-inception-join-pick_best: whole-flow fusion (Optimize(whole=True)): "
        "6 operators in one process",
        "+ fusion: map 'preprocess': whole-flow fusion crosses the CPU/GPU boundary: "
        "runs with map 'resnet' on GPU workers",
    ]


def test_whole_flow_fusion_splits_around_anyof():
    plan = fused(flows.racing_router(), whole=True)
    assert names(plan) == ["fast", "slow", "anyof", "after"]
    assert plan.stage("anyof").in_router


def test_whole_flow_fusion_splits_at_dynamic_lookups_for_locality():
    assert names(fused(flows.recommender(), whole=True)) == ["lookup-category", "lookup-top5"]
    assert names(fused(flows.recommender(), whole=True, locality=False)) == ["lookup-category-lookup-top5"]


def test_whole_flow_fusion_falls_back_to_chains_when_a_region_has_two_outputs():
    flow = cf.Flow("two", x=int).map(inc, names={"x": int}, name="a")
    b = flow.map(inc, names={"y": int}, name="b")
    c = flow.map(inc, names={"y": int}, name="c")
    plan = fused(b.anyof(c), whole=True)
    assert names(plan) == ["a", "b", "c", "anyof"]
    assert (
        "- fusion: map 'a': whole-flow fusion declined: it would have 2 outputs (map 'b', map 'c'); fell back to chains"
    ) in reasons(plan)


def test_stage_names_are_unique():
    flow = cf.Flow("dup", x=int)
    twice = flow.map(inc, names={"y": int}).join(flow.map(inc, names={"z": int}))
    assert names(fused(twice)) == ["inc", "inc-2", "join"]


def test_lambdas_read_as_lambda_in_stage_names():
    flow = cf.Flow("lam", x=int).map(lambda row: 1, names={"y": int}).filter(lambda row: True)
    assert names(fused(flow)) == ["lambda-lambda"]


@pytest.mark.parametrize("length", [2, 5, 10])
def test_chains_of_any_length_fuse(length):
    assert names(fused(flows.chain(length))) == ["-".join(f"m{i}" for i in range(1, length + 1))]
