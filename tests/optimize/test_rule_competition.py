"""Competitive execution: high-variance stages race replicas, whatever reads them."""

from __future__ import annotations

from snapshots import flows

import cloudflow_nb as cf


def competed(flow: cf.Flow, **options) -> cf.Plan:
    return cf.optimize_until(flow, "competed", cf.Optimize(**options))


def decisions(plan: cf.Plan) -> list[str]:
    return [str(d) for d in plan.decisions if d.rule == "competition"]


def inc(row):
    return row["x"] + 1


def test_high_variance_stages_race_replicas_even_into_a_join():
    plan = competed(flows.nmt(), compete=3)
    racing = {s.name: (s.competitive, s.replicas) for s in plan.stages}
    assert racing == {
        "language": (False, 1),
        "is_fr": (False, 1),
        "translate_fr": (True, 3),
        "is_de": (False, 1),
        "translate_de": (True, 3),
        "join": (False, 1),
    }
    assert plan.stage("join").inputs == ("translate_fr", "translate_de")
    assert decisions(plan)[0] == (
        "+ competition: translate_fr: races 3 replicas on distinct workers for map 'translate_fr'; "
        "the first result feeds its 1 reader"
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
        == "- competition: is_fr-translate_fr: off (Optimize(compete=1)): map 'translate_fr' runs one replica"
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
