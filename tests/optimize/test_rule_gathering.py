"""Gathering: the joins and unions that end a flow run in the router; nothing else does."""

from __future__ import annotations

from snapshots import flows

import cloudflow_nb as cf


def gathered(flow: cf.Flow, **options) -> cf.Plan:
    return cf.optimize_until(flow, "gathered", cf.Optimize(**options))


def decisions(plan: cf.Plan) -> list[str]:
    return [str(d) for d in plan.decisions if d.rule == "gathering"]


def routed(plan: cf.Plan) -> list[str]:
    return [s.name for s in plan.stages if s.in_router]


def double(row):
    return row["x"] * 2


def negate(row):
    return -row["x"]


def test_a_join_at_the_output_runs_in_the_router():
    plan = gathered(flows.nmt())
    assert routed(plan) == ["join"]
    assert decisions(plan) == [
        "+ gathering: join: in the router, no call per request: the inputs come back to it instead of the result"
    ]


def test_a_chain_of_joins_and_unions_at_the_output_is_gathered_whole():
    source = cf.Flow("fan", x=int)
    a, b, c = (source.map(double, names={n: int}, name=n) for n in "abc")
    flow = a.join(b, how="outer").join(c, how="outer")
    flow = flow.union(flow)
    plan = gathered(flow)
    assert routed(plan) == ["join", "join-2", "union"]
    assert [s.name for s in plan.stages if not s.in_router] == ["a", "b", "c"]


def test_a_join_read_by_a_worker_stays_on_a_worker():
    source = cf.Flow("mid", x=int)
    joined = source.map(double, names={"y": int}).join(source.map(negate, names={"z": int}))
    plan = gathered(joined.map(double, names={"w": int}, name="after"), fusion=False)
    assert routed(plan) == []
    assert decisions(plan) == [
        "- gathering: join: a worker reads its result or its inputs: "
        "it stays on a worker (no detour through the router)"
    ]


def test_a_join_whose_input_a_worker_also_reads_stays_on_a_worker():
    # gathering it would bring 'double' back to the router and send it out again to 'after'
    source = cf.Flow("shared", x=int)
    y = source.map(double, names={"y": int})
    after = y.map(negate, names={"z": int}, name="after")
    plan = gathered(y.join(after, how="left"))
    assert routed(plan) == []


def test_a_stage_fused_with_a_user_function_is_not_gathered():
    plan = gathered(flows.cascade())  # its left join is fused with pick_best
    assert routed(plan) == []
    assert decisions(plan) == ["- gathering: flow 'cascade': no stage only joins or unions its inputs"]


def test_a_join_feeding_an_anyof_in_the_router_is_gathered():
    source = cf.Flow("either", x=int)
    joined = source.map(double, names={"y": int}).join(source.map(negate, names={"z": int}), how="outer")
    other = source.map(double, names={"y": int}, name="other").map(negate, names={"z": int}, name="other2")
    plan = gathered(joined.anyof(other))
    assert set(routed(plan)) == {"join", "anyof"}


def test_gathering_off_and_unoptimized_keep_joins_on_workers():
    assert routed(gathered(flows.nmt(), gather=False)) == []
    assert decisions(gathered(flows.nmt(), gather=False)) == [
        "- gathering: join: off (Optimize(gather=False)): each runs as a call on a worker"
    ]
    assert routed(flows.nmt().optimize(cf.Optimize.none())) == []
