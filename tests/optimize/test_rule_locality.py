"""Locality: the stage that starts at a dynamic lookup is routed on the lookup's key column."""

from __future__ import annotations

from snapshots import flows

import cloudflow_nb as cf


def localized(flow: cf.Flow, **options) -> cf.Plan:
    return cf.optimize_until(flow, "localized", cf.Optimize(**options))


def decisions(plan: cf.Plan) -> list[str]:
    return [str(d) for d in plan.decisions if d.rule == "locality"]


def key(row):
    return f"k{row['x']}"


def test_each_lookup_stage_is_routed_on_its_key_column():
    plan = localized(flows.recommender())
    assert [(s.name, s.locality, s.inputs) for s in plan.stages] == [
        ("lookup-category", "user", ("source",)),
        ("lookup-top5", "category", ("lookup-category",)),
    ]
    assert decisions(plan)[1] == (
        "+ locality: lookup 'row[category]': stage 'lookup-top5' runs on a worker holding "
        "store[row['category']] (dynamic dispatch: the plan is split at the lookup)"
    )


def test_locality_off_keeps_the_lookup_with_its_input():
    plan = localized(flows.recommender(), locality=False)
    assert [s.locality for s in plan.stages] == [None]
    assert decisions(plan) == [
        "- locality: flow 'recommender': off (Optimize(locality=False)): lookups run on any worker"
    ]


def test_static_lookups_are_not_routed():
    plan = localized(cf.Flow("s", x=int).lookup("model"))
    assert decisions(plan) == ["- locality: flow 's': no dynamic lookup to route"]


def test_a_stage_with_two_inputs_is_not_routed():
    flow = cf.Flow("two", x=int)
    looked = flow.map(key, names={"k": str}).lookup("k", dynamic=True, into="v")
    plan = localized(looked.join(flow.map(key, names={"j": str})), whole=True)
    (stage,) = [s for s in plan.stages if any(op.kind == "lookup" for op in s.operators)]
    assert stage.locality is None
    assert f"stage {stage.name!r} has 2 inputs; routing needs the key in its only input" in decisions(plan)[0]


def test_a_stage_starting_with_two_lookups_is_routed_on_the_first():
    flow = cf.Flow("two", x=int).map(key, names={"k": str, "j": str})
    first = flow.lookup("k", dynamic=True, into="v")
    second = flow.lookup("j", dynamic=True, into="w")
    plan = localized(first.join(second), whole=True)
    stage = plan.stage("lookup-lookup-join")
    assert stage.locality == "k"
    assert decisions(plan)[1] == (
        "- locality: lookup 'row[j]': stage 'lookup-lookup-join' is already routed on column 'k'"
    )
