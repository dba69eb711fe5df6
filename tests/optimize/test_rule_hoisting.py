"""Filter hoisting: filters that read a fan-out run in the stage that feeds them."""

from __future__ import annotations

import pytest
from snapshots import flows

import cloudflow_nb as cf
from cloudflow_nb.plan import Filter, Mark, Select, StageInput
from cloudflow_nb.runtime.local import LocalEngine
from cloudflow_nb.table import Table
from cloudflow_nb.traversal import walk


def fused(flow: cf.Flow, **options) -> cf.Plan:
    return cf.optimize_until(flow, "fused", cf.Optimize(**options))


def hoists(plan: cf.Plan) -> list[str]:
    return [str(d) for d in plan.decisions if "hoisted" in d.reason]


def positive(row):
    return row["x"] > 0


def negative(row):
    return row["x"] < 0


def double(row):
    return row["x"] * 2


def negate(row):
    return -row["x"]


def branches() -> cf.Flow:
    """A fan-out to two filtered branches, one a lone filter, one a filter and a map, joined."""
    source = cf.Flow("branches", x=int).map(double, names={"x": int}, name="first")
    up = source.filter(positive)
    down = source.filter(negative).map(negate, names={"y": int}, name="flip")
    return up.join(down, how="outer")


def test_filters_of_a_fan_out_run_in_the_stage_that_feeds_them():
    plan = fused(branches())
    # 'negative-flip' lost its filter: it is named after what it still runs
    assert [s.name for s in plan.stages] == ["first", "flip", "join"]
    first = plan.stage("first")
    assert [op.title for op in first.operators] == ["map 'first'", "filter 'positive'", "filter 'negative'"]
    assert [n.column for n in walk(first.program) if isinstance(n, Mark)] == ["_kept0", "_kept1"]
    assert [op.title for op in plan.stage("flip").operators] == ["map 'flip'"]
    # the lone filter's stage is gone: the join selects its rows from 'first' itself
    assert plan.stage("join").inputs == ("first", "flip")
    assert {n.origin for n in walk(plan.stage("join").program) if isinstance(n, StageInput)} == {"first", "flip"}
    assert any(isinstance(n, Select) for n in walk(plan.stage("join").program))
    assert hoists(plan) == [
        "+ fusion: filter 'positive', filter 'negative': hoisted into stage 'first', which feeds them: each "
        "branch gets the rows its filter kept, and a branch left without rows costs no call; stage "
        "'negative-flip', left without its filter, is now 'flip'"
    ]


def test_a_renamed_stage_takes_a_name_no_other_stage_has():
    source = cf.Flow("clash", x=int).map(double, names={"x": int}, name="first")
    other = source.filter(positive).map(negate, names={"y": int}, name="flip")
    mine = source.filter(negative).map(negate, names={"y": int}, name="flip")
    plan = fused(other.join(mine, how="outer"))
    assert [s.name for s in plan.stages] == ["first", "flip", "flip-2", "join"]
    assert plan.stage("join").inputs == ("flip", "flip-2")


@pytest.mark.parametrize("x", [-3, 0, 2])
def test_hoisted_plans_answer_like_the_logical_plan(x):
    flow = branches()
    plan = flow.optimize()
    request = Table.from_request({"x": x}, flow.input_schema)
    assert LocalEngine().run_plan(plan, request) == flow.run({"x": x})


def test_a_filter_error_still_names_the_filter():
    def picky(row):
        raise ValueError("no")

    source = cf.Flow("bad", x=int).map(double, names={"x": int}, name="first")
    flow = source.filter(picky).join(source.filter(positive), how="outer")
    plan = flow.optimize()
    assert any(isinstance(n, Mark) for n in walk(plan.stage("first").program))
    request = Table.from_request({"x": 1}, flow.input_schema)
    with pytest.raises(cf.OperatorError, match="filter 'picky' failed on qid 0: ValueError: no"):
        LocalEngine().run_plan(plan, request)


def test_not_hoisted_when_a_non_filter_reads_the_fan_out():
    source = cf.Flow("mixed", x=int).map(double, names={"x": int}, name="first")
    plan = fused(source.filter(positive).join(source.map(negate, names={"y": int}, name="other"), how="outer"))
    assert hoists(plan) == []
    assert any(isinstance(op, Filter) for op in plan.stage("positive").operators)


def test_not_hoisted_into_a_racing_stage_nor_with_fusion_off():
    source = cf.Flow("race", x=int).map(double, names={"x": int}, name="first", high_variance=True)
    flow = source.filter(positive).join(source.filter(negative), how="outer")
    assert hoists(fused(flow)) == []
    assert hoists(fused(flow, compete=1)) != []
    assert hoists(fused(branches(), fusion=False)) == []
    assert hoists(fused(branches(), whole=True)) == []


def test_translation_branches_read_the_language_stage():
    plan = fused(flows.nmt())
    assert [s.name for s in plan.stages] == ["language", "translate_fr", "translate_de", "join"]
    assert plan.stage("translate_fr").inputs == ("language",)


def test_a_branch_that_fans_out_again_hoists_its_own_filters():
    source = cf.Flow("twice", x=int).map(double, names={"x": int}, name="first")
    up = source.filter(positive).map(negate, names={"y": int}, name="mid")
    big = up.filter(lambda r: r["y"] < -4, name="big").map(double, names={"z": int}, name="b")
    small = up.filter(lambda r: r["y"] >= -4, name="small").map(double, names={"z": int}, name="s")
    flow = big.union(small).join(source.filter(negative), how="outer")
    plan = fused(flow)
    assert len(hoists(plan)) == 2
    mid = next(s for s in plan.stages if "mid" in s.name)
    assert any(isinstance(n, Select) for n in walk(mid.program))  # still selects its own rows
    assert any(isinstance(n, Mark) for n in walk(mid.program))  # and marks its readers' rows
    for x in (-3, 0, 1, 2, 5):
        request = Table.from_request({"x": x}, flow.input_schema)
        assert LocalEngine().run_plan(flow.optimize(), request) == flow.run({"x": x})
