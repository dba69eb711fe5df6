"""A stage whose inputs all came back without rows answers in the router, without a call, when its
operators make nothing of nothing; an aggregation, which may make a row of nothing, still runs."""

from __future__ import annotations

from typing import Any

import pytest

import cloudflow_nb as cf
from cloudflow_nb.runtime.router import empty_in_empty_out

X = cf.Flow("xs", x=int)


def positive(row):
    return row["x"] > 0


def double(row):
    return 2 * row["x"]


def doubles(rows):
    return [2 * r["x"] for r in rows]


def branches() -> cf.Flow:
    """A filter per sign, an expensive-looking map on each, an outer join: one branch is always empty."""
    up = X.filter(positive).map(double, names=["y"], name="up")
    down = X.filter(lambda r: r["x"] <= 0).map(doubles, names=["y"], batching=True, name="down")
    return up.join(down, how="outer")


def last_program(flow: cf.Flow, options: cf.Optimize | bool = False) -> Any:
    return flow.optimize(options).stages[-1].program


def test_row_wise_programs_make_nothing_of_nothing_and_aggregations_do_not():
    assert all(empty_in_empty_out(stage.program) for stage in branches().optimize(False).stages)
    assert empty_in_empty_out(last_program(X.lookup("x", dynamic=True, into="v")))
    assert empty_in_empty_out(last_program(X.map(lambda r: [r["x"]], names=["xs"]).explode("xs", names="y")))
    assert empty_in_empty_out(last_program(X.union(X.filter(positive))))
    assert not empty_in_empty_out(last_program(X.filter(positive).agg("count")))
    assert not empty_in_empty_out(last_program(X.filter(positive).agg("count"), cf.Optimize()))


@pytest.mark.cluster
def test_an_emptied_branch_costs_no_call(serving_cluster):
    flow = branches()
    requests = [{"x": x} for x in (3, -2, 5, 0, 7)]
    with serving_cluster.deploy(flow, optimize=False) as dep:  # each filter a stage of its own
        got = [dep.predict(request)[0] for request in requests]
        stages = dep.stats()["stages"]
    assert got == [flow.run(request)[0] for request in requests]
    assert [row["y"] for row in got] == [6, -4, 10, 0, 14]
    up, down = stages["up"], stages["down"]
    assert (up["count"], up["skipped"]) == (3, 2)  # called for the positive ones only
    assert (down["count"], down["skipped"]) == (2, 3)
    assert sum(s["count"] + s["skipped"] for s in stages.values()) == len(requests) * len(stages)


@pytest.mark.cluster
def test_an_aggregation_of_nothing_still_runs(serving_cluster):
    flow = X.filter(positive).agg("count")
    with serving_cluster.deploy(flow, optimize=False) as dep:
        out = dep.predict({"x": -1})
        stages = dep.stats()["stages"]
    assert list(out) == list(flow.run({"x": -1}))
    assert out[0]["count"] == 0
    assert (stages["agg"]["count"], stages["agg"]["skipped"]) == (1, 0)


@pytest.mark.cluster
def test_hoisted_filters_send_each_branch_only_its_rows(serving_cluster):
    # a fan-out feeding the filters: they run in its stage, and the router selects each branch's rows
    flow = X.map(double, names={"x": int}, name="first")
    flow = (
        flow.filter(positive)
        .map(double, names=["y"], name="up")
        .join(flow.filter(lambda r: r["x"] <= 0).map(doubles, names=["y"], batching=True, name="down"), how="outer")
    )
    requests = [{"x": x} for x in (3, -2, 5, 0, 7)] + [[{"x": 1}, {"x": -1}]]
    with serving_cluster.deploy(flow) as dep:
        assert [s.name for s in dep.plan.stages] == ["first", "up", "down", "join"]
        got = [dep.predict(request) for request in requests]
        stages = dep.stats()["stages"]
    assert got == [flow.run(request) for request in requests]
    assert [row["y"] for row in got[-1]] == [4, -4]  # a two-row request: one row down each branch
    assert (stages["up"]["count"], stages["up"]["skipped"]) == (4, 2)
    assert (stages["down"]["count"], stages["down"]["skipped"]) == (3, 3)
    assert stages["first"]["count"] == len(requests)  # the filters cost no call of their own


def with_frame(row):
    return bytes(300_000)  # over the inline limit: the output stays on its worker


def frame_size(row):
    return len(row["frame"]) + row["x"]


@pytest.mark.cluster
def test_a_branch_of_an_output_kept_on_a_worker_is_skipped_when_its_filter_keeps_nothing(serving_cluster):
    # the router never sees the rows: the replica says which hoisted filters kept one
    flow = X.map(with_frame, names={"frame": bytes}, name="first")
    up = flow.filter(positive).map(frame_size, names=["y"], name="up")
    down = flow.filter(lambda r: r["x"] <= 0).map(frame_size, names=["y"], name="down")
    flow = up.join(down, how="outer")
    requests = [{"x": x} for x in (3, -2, 5)] + [[{"x": 1}, {"x": -1}]]
    with serving_cluster.deploy(flow) as dep:
        assert [s.name for s in dep.plan.stages] == ["first", "up", "down", "join"]
        got = [dep.predict(request) for request in requests]
        stages = dep.stats()["stages"]
    assert got == [flow.run(request) for request in requests]
    assert [row["y"] for row in got[-1]] == [300_001, 299_999]
    assert (stages["up"]["count"], stages["up"]["skipped"]) == (3, 1)
    assert (stages["down"]["count"], stages["down"]["skipped"]) == (2, 2)
