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
