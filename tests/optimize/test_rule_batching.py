"""Batching: stages whose maps all batch get the options' batch policy."""

from __future__ import annotations

from snapshots import flows

import cloudflow_nb as cf
from cloudflow_nb.physical import Batching


def batched(flow: cf.Flow, **options) -> cf.Plan:
    return cf.optimize_until(flow, "batched", cf.Optimize(**options))


def decisions(plan: cf.Plan) -> list[str]:
    return [str(d) for d in plan.decisions if d.rule == "batching"]


def test_a_batching_map_gets_the_batch_policy_from_the_options():
    plan = batched(flows.cascade(), max_batch_size=8, max_batch_wait_ms=5.0)
    assert plan.stage("resnet").batching == Batching(8, 5.0)
    assert all(s.batching is None for s in plan.stages if s.name != "resnet")
    assert decisions(plan) == ["+ batching: resnet: up to 8 requests per call, waiting at most 5 ms"]


def test_filters_do_not_stop_a_fused_stage_from_batching():
    chain = cf.Flow("chain", frame=bytes).filter(flows.is_person)
    chain = chain.map(flows.resnet, names={"who": int, "p": float}, batching=True, name="people")
    assert batched(chain).stage("is_person-people").batching == Batching(16, 0.0)
    # the video flow's branch filters run in 'detect' (hoisted): its branches batch too
    plan = batched(flows.video())
    assert plan.stage("people").batching == Batching(16, 0.0)
    assert plan.stage("cars").batching == Batching(16, 0.0)


def test_a_fused_stage_with_a_row_at_a_time_map_declines():
    plan = batched(flows.cascade(), whole=True)
    (stage,) = plan.stages
    assert stage.batching is None
    assert decisions(plan) == [
        f"- batching: {stage.name}: declined: map 'preprocess' takes one row at a time "
        "(every map of a stage must batch)"
    ]


def test_batching_off():
    plan = batched(flows.cascade(), batching=False)
    assert all(s.batching is None for s in plan.stages)
    assert decisions(plan) == ["- batching: resnet: off (Optimize(batching=False)): one request per call"]


def test_nothing_to_batch():
    assert decisions(batched(flows.chain(2))) == ["- batching: flow 'chain': no operator is marked batching"]
