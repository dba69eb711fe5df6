"""Competitive execution: high-variance stages race replicas, whatever reads them."""

from __future__ import annotations

import pytest
from snapshots import flows

import cloudflow_nb as cf


def competed(flow: cf.Flow, **options) -> cf.Plan:
    return cf.optimize_until(flow, "competed", cf.Optimize(**options))


def decisions(plan: cf.Plan) -> list[str]:
    return [str(d) for d in plan.decisions if d.rule == "competition"]


def inc(row):
    return row["x"] + 1


async def ainc(row):
    return row["x"] + 1


class AsyncModel:
    async def __call__(self, row):
        return row["x"] + 1


def test_high_variance_stages_race_replicas_even_into_a_join():
    plan = competed(flows.nmt(), compete=3)
    racing = {s.name: (s.competitive, s.replicas) for s in plan.stages}
    assert racing == {  # the filters are hoisted into 'language'
        "language": (False, 1),
        "translate_fr": (True, 3),
        "translate_de": (True, 3),
        "join": (False, 1),
    }
    assert plan.stage("join").inputs == ("translate_fr", "translate_de")
    assert decisions(plan)[0] == (
        "+ competition: translate_fr: races 3 replicas on distinct workers for map 'translate_fr'; "
        "the first result feeds its 1 reader; a sync stage needs a worker per racer (fewer than 3 workers "
        "race fewer; make it async or declare releases_gil=True to share workers), and a loser runs to its "
        "end before its replica races again"
    )


def test_racing_works_into_a_fan_out():
    flow = cf.Flow("fan", x=int).map(inc, names={"x": int}, high_variance=True, name="slow")
    out = flow.map(inc, names={"y": int}, name="a").join(flow.map(inc, names={"z": int}, name="b"))
    plan = competed(out)
    assert plan.stage("slow").competitive
    assert plan.stage("slow").replicas == 2
    assert "the first result feeds its 2 readers" in decisions(plan)[0]


def test_compete_one_turns_racing_off_and_says_so():
    plan = competed(flows.nmt(), compete=1)
    assert not any(s.competitive for s in plan.stages)
    assert all(s.replicas == 1 for s in plan.stages)
    assert (
        decisions(plan)[0]
        == "- competition: translate_fr: off (Optimize(compete=1)): map 'translate_fr' runs one replica"
    )


def test_nothing_to_race():
    plan = competed(flows.chain(2))
    assert decisions(plan) == ["- competition: flow 'chain': no operator is marked high_variance"]


def test_a_whole_flow_stage_races_with_its_fused_operators():
    flow = cf.Flow("w", x=int).map(inc, names={"x": int}, name="a").map(inc, names={"x": int}, high_variance=True)
    plan = competed(flow, whole=True, compete=2)
    (stage,) = plan.stages
    assert (stage.competitive, stage.replicas) == (True, 2)
    assert "with 1 fused operators, all re-run per replica" in decisions(plan)[0]


def test_async_and_gil_releasing_stages_race_on_shared_workers():
    for fn, flags, kind in [(ainc, {}, "async"), (AsyncModel, {}, "async"), (inc, {"releases_gil": True}, "it runs")]:
        flow = cf.Flow("a", x=int).map(fn, names={"x": int}, high_variance=True, name="slow", **flags)
        plan = competed(flow, compete=3)
        stage = plan.stage("slow")
        assert (stage.competitive, stage.replicas, stage.concurrent) == (True, 3, True)
        (decision,) = decisions(plan)
        assert f"; {kind}" in decision
        assert "racers may share a worker, so all race whatever the worker count" in decision
        assert "a loser is cancelled and frees its slot at once" in decision


def test_a_sync_map_fused_with_an_async_one_is_not_concurrent():
    flow = cf.Flow("m", x=int).map(inc, names={"x": int}, name="a").map(ainc, names={"x": int}, high_variance=True)
    (stage,) = competed(flow, whole=True, compete=2).stages
    assert (stage.competitive, stage.concurrent) == (True, False)


def test_hedging_replaces_racing_and_says_when_it_hedges():
    flow = cf.Flow("h", x=int).map(inc, names={"x": int}, high_variance=True, name="slow")
    plan = competed(flow, hedge_after="p90", compete=1)
    stage = plan.stage("slow")
    assert (stage.competitive, stage.replicas, stage.hedge_after) == (False, 2, "p90")
    assert decisions(plan) == [
        "+ competition: slow: hedges map 'slow' over 2 replicas: a call goes to one, and a second copy to "
        "another only when the first has not answered after its own recent p90 latency; the first answer "
        "wins, the other is cancelled"
    ]
    assert "hedge x2 after p90" in flow.explain(options=cf.Optimize(hedge_after="p90"))
    ms = competed(flow, hedge_after=25, compete=3).stage("slow")
    assert (ms.replicas, ms.hedge_after) == (3, 25.0)
    assert "hedge x3 after 25ms" in flow.explain(options=cf.Optimize(hedge_after=25, compete=3))


def test_hedge_after_is_checked():
    assert cf.Optimize(hedge_after="p99.50").hedge_after == "p99.5"
    assert cf.Optimize(hedge_after=12).hedge_after == 12.0
    for bad in ["p", "p40", "p100", "90", "fast", 0, -1.0, float("inf"), True]:
        with pytest.raises(cf.OptimizerError, match=r"hedge_after must be None, a percentile such as 'p90'"):
            cf.Optimize(hedge_after=bad)
