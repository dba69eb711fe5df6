"""The named passes: order, stopping after any of them, continuing a plan, and bad input."""

from __future__ import annotations

import pytest
from snapshots import flows

import cloudflow_nb as cf
from cloudflow_nb.optimize import PASSES, optimize


def facts(plan: cf.Plan) -> list[tuple]:
    return [
        (s.name, s.inputs, s.gpu, s.replicas, s.competitive, s.batching, s.locality, s.in_router) for s in plan.stages
    ]


def test_passes_run_in_the_documented_order():
    assert PASSES == ("logical", "fused", "gathered", "competed", "batched", "placed", "localized")


@pytest.mark.parametrize("stage", PASSES)
def test_optimize_until_stops_after_the_named_pass(stage):
    plan = cf.optimize_until(flows.cascade(), stage)
    assert plan.pass_name == stage
    rules = {
        "fused": "fusion",
        "gathered": "gathering",
        "competed": "competition",
        "batched": "batching",
        "placed": "placement",
    }
    done = {rules.get(p, "locality") for p in PASSES[1 : PASSES.index(stage) + 1]}
    assert {d.rule for d in plan.decisions} == done


def test_the_logical_pass_has_one_stage_per_operator_and_no_decisions():
    plan = cf.optimize_until(flows.cascade(), "logical")
    assert [len(s.operators) for s in plan.stages] == [1] * 6
    assert plan.decisions == ()
    assert not any(s.gpu for s in plan.stages)


def test_a_plan_continues_from_where_it_stopped():
    fused = cf.optimize_until(flows.nmt(), "fused", cf.Optimize(compete=3))
    assert facts(cf.optimize_until(fused, "localized")) == facts(flows.nmt().optimize(cf.Optimize(compete=3)))
    assert cf.optimize_until(fused, "localized").decisions[: len(fused.decisions)] == fused.decisions


def test_a_later_plan_or_new_options_restart_from_the_logical_plan():
    full = flows.cascade().optimize()
    assert cf.optimize_until(full, "fused").pass_name == "fused"
    assert facts(cf.optimize_until(full, "fused")) == facts(cf.optimize_until(flows.cascade(), "fused"))
    whole = cf.optimize_until(full, "localized", cf.Optimize(whole=True))
    assert len(whole.stages) == 1
    assert whole.options == cf.Optimize(whole=True)


def test_flow_methods_take_a_stage():
    flow = flows.cascade()
    assert flow.optimize(stage="batched").pass_name == "batched"
    assert "after pass 'fused'" in flow.explain(stage="fused")
    assert "resnet" in flow.show_graph(stage="competed").source


def test_optimize_is_the_last_pass_and_deterministic():
    flow = flows.nmt()
    plan = optimize(flow.name, flow.node)
    assert plan.pass_name == "localized"
    assert plan.options == cf.Optimize()
    assert plan.explain() == flow.optimize().explain() == flow.explain()


def test_unknown_pass_lists_the_valid_ones():
    with pytest.raises(cf.OptimizerError, match=r"unknown pass 'fuse' \(must be one of logical, fused, gathered, comp"):
        cf.optimize_until(flows.cascade(), "fuse")


def test_bad_target_and_bad_options_are_flow_errors():
    with pytest.raises(cf.OptimizerError, match=r"expected a cf\.Flow or a cf\.Plan, got str"):
        cf.optimize_until("cascade", "fused")
    with pytest.raises(cf.FlowError, match=r"expected True, False or a cf\.Optimize, got dict"):
        flows.cascade().optimize({"fusion": True})
    with pytest.raises(cf.FlowError, match=r"expected a cf\.Flow, got Plan"):
        cf.compare(flows.cascade().optimize())


def test_optimizer_output_runs_like_the_flow():
    from cloudflow_nb.runtime.local import LocalEngine
    from cloudflow_nb.table import Table

    flow = flows.recommender()
    store = {"u1": [1.0], "cat:1": [[2.0]]}
    request = [{"user": "u1", "recent": 4}]
    plan = flow.optimize()
    table = Table.from_request(request, flow.input_schema)
    assert LocalEngine(store=store).run_plan(plan, table) == flow.run(request, store=store)
