"""Operator semantics (DESIGN.md, "Precise semantics"), run through the shared ``run`` fixture.

Every test goes through ``run(flow, request, store=None)`` so that each engine the fixture is
parametrized with must give the same tables. Functions are module-level (or lambdas) so that
flows ship to workers.
"""

from __future__ import annotations

import numpy as np
import pytest

import cloudflow_nb as cf


def records(table: cf.Table) -> list[dict]:
    return table.to_records()


# -- user functions -------------------------------------------------------------------------------


def double(row):
    return row["x"] * 2


def split_sign(row):
    return abs(row["x"]), row["x"] < 0


def as_dict(row):
    return {"neg": row["x"] < 0, "mag": abs(row["x"])}


def as_list(row):
    return [row["x"] + 1, row["x"] + 2]


def pair_in_one_column(row):
    return (row["x"], "pair")


def is_even(row):
    return row["x"] % 2 == 0


def batch_double(rows):
    if not isinstance(rows, list):
        raise TypeError(f"a batching map gets a list, got {type(rows).__name__}")
    return [r["x"] * 2 for r in rows]


def batch_pairs(rows):
    return [(r["x"], r["x"] * r["x"]) for r in rows]


class AddOffset:
    """A 'model': loads its parameters once, then is called per row."""

    def __init__(self):
        self.offset = 100

    def __call__(self, row):
        return row["x"] + self.offset


class BatchModel:
    def __init__(self):
        self.weights = np.array([2.0])

    def __call__(self, rows):
        assert isinstance(rows, list)
        xs = np.array([r["x"] for r in rows], dtype=float)
        return list(xs * self.weights[0])


class KeepPositive:
    def __init__(self):
        self.threshold = 0

    def __call__(self, row):
        return row["x"] > self.threshold


def score_a(row):
    return float(row["x"]) * 0.5


def score_b(row):
    return float(row["x"]) * 2.0


def score_c(row):
    return 7.0


X = cf.Flow("xs", x=int)
REQ = [{"x": 1}, {"x": -2}, {"x": 3}, {"x": 4}]


# -- qid ----------------------------------------------------------------------------------------------


def test_source_only_flow_numbers_rows(run):
    out = run(X, REQ)
    assert out.columns == ("qid", "x")
    assert records(out) == [{"qid": i, "x": r["x"]} for i, r in enumerate(REQ)]


def test_one_dict_request_is_one_row(run):
    assert records(run(X, {"x": 5})) == [{"qid": 0, "x": 5}]


def test_dataframe_request(run):
    pd = pytest.importorskip("pandas")
    out = run(X.map(double, names={"y": int}), pd.DataFrame({"x": [1, 2]}))
    assert records(out) == [{"qid": 0, "x": 1, "y": 2}, {"qid": 1, "x": 2, "y": 4}]


def test_empty_request(run):
    out = run(X.map(double, names={"y": int}).filter(is_even), [])
    assert len(out) == 0
    assert out.columns == ("qid", "x", "y")


# -- map ----------------------------------------------------------------------------------------------


def test_map_adds_a_column_and_keeps_qid(run):
    out = run(X.map(double, names={"y": int}), REQ)
    assert out.columns == ("qid", "x", "y")
    assert out.schema["y"] is int
    assert records(out) == [{"qid": i, "x": r["x"], "y": 2 * r["x"]} for i, r in enumerate(REQ)]


def test_map_replaces_a_column_in_place(run):
    flow = cf.Flow("f", x=int, s=str).map(lambda row: row["x"] * 1.5, names={"x": float})
    out = run(flow, [{"x": 2, "s": "a"}])
    assert out.columns == ("qid", "x", "s")
    assert out.schema["x"] is float
    assert records(out) == [{"qid": 0, "x": 3.0, "s": "a"}]


@pytest.mark.parametrize("names", ["y", ["y"], ("y",), {"y": int}, {"y": object}])
def test_map_names_forms(run, names):
    out = run(X.map(double, names=names), [{"x": 4}])
    assert out[0]["y"] == 8


def test_map_untyped_names_are_any(run):
    flow = X.map(split_sign, names=["mag", "neg"])
    assert flow.schema["mag"] is object
    assert records(run(flow, [{"x": -3}])) == [{"qid": 0, "x": -3, "mag": 3, "neg": True}]


def test_map_tuple_return_fills_several_columns(run):
    out = run(X.map(split_sign, names={"mag": int, "neg": bool}), [{"x": -3}, {"x": 2}])
    assert records(out) == [
        {"qid": 0, "x": -3, "mag": 3, "neg": True},
        {"qid": 1, "x": 2, "mag": 2, "neg": False},
    ]


def test_map_dict_return_is_matched_by_name(run):
    out = run(X.map(as_dict, names={"mag": int, "neg": bool}), [{"x": -3}])
    assert list(out.columns) == ["qid", "x", "mag", "neg"]
    assert records(out) == [{"qid": 0, "x": -3, "mag": 3, "neg": True}]


def test_map_list_return_fills_several_columns(run):
    out = run(X.map(as_list, names=["a", "b"]), [{"x": 1}])
    assert records(out) == [{"qid": 0, "x": 1, "a": 2, "b": 3}]


def test_map_single_name_takes_the_value_whatever_its_type(run):
    out = run(X.map(pair_in_one_column, names={"p": tuple}), [{"x": 1}])
    assert out[0]["p"] == (1, "pair")


def test_map_accepts_int_for_float_and_none(run):
    out = run(X.map(lambda row: row["x"] if row["x"] > 0 else None, names={"y": float}), [{"x": 2}, {"x": -1}])
    assert out.column("y") == [2, None]


def test_map_of_numpy_arrays(run):
    flow = cf.Flow("img", img=np.ndarray).map(lambda row: row["img"] * 2, names={"img": np.ndarray})
    out = run(flow, {"img": np.arange(3)})
    np.testing.assert_array_equal(out[0]["img"], np.arange(3) * 2)


def test_map_with_a_class(run):
    out = run(X.map(AddOffset, names={"y": int}), REQ)
    assert out.column("y") == [r["x"] + 100 for r in REQ]


def test_map_with_a_callable_instance(run):
    out = run(X.map(AddOffset(), names={"y": int}), [{"x": 1}])
    assert out.column("y") == [101]


def test_map_class_is_reused_across_requests(run):
    flow = X.map(AddOffset, names={"y": int})
    assert run(flow, [{"x": 1}]).column("y") == [101]
    assert run(flow, [{"x": 2}]).column("y") == [102]


def test_batching_map_gets_a_list_and_returns_in_order(run):
    out = run(X.map(batch_double, names={"y": int}, batching=True), REQ)
    assert records(out) == [{"qid": i, "x": r["x"], "y": 2 * r["x"]} for i, r in enumerate(REQ)]


def test_batching_map_with_several_names(run):
    out = run(X.map(batch_pairs, names={"a": int, "b": int}, batching=True), [{"x": 3}])
    assert records(out) == [{"qid": 0, "x": 3, "a": 3, "b": 9}]


def test_batching_map_with_a_class(run):
    out = run(X.map(BatchModel, names={"y": float}, batching=True), [{"x": 1}, {"x": 2}])
    assert out.column("y") == [2.0, 4.0]


def test_batching_map_on_empty_request(run):
    out = run(X.map(batch_double, names={"y": int}, batching=True), [])
    assert len(out) == 0


def test_gpu_and_high_variance_maps_compute_the_same(run):
    flow = X.map(double, names={"y": int}, gpu=True, high_variance=True, name="dbl")
    assert run(flow, REQ).column("y") == [2 * r["x"] for r in REQ]


# -- filter -------------------------------------------------------------------------------------------


def test_filter_keeps_matching_rows_and_their_qids(run):
    out = run(X.filter(is_even), REQ)
    assert records(out) == [{"qid": 1, "x": -2}, {"qid": 3, "x": 4}]


def is_big(row):
    return np.array([row["x"]]) > 2  # an array, not a bool: ambiguous


def numpy_verdict(row):
    return np.int64(row["x"]) > 2  # np.bool_


def test_filter_takes_numpy_bools(run):
    assert run(X.filter(numpy_verdict), REQ).column("x") == [3, 4]


@pytest.mark.parametrize(
    ("pred", "got"),
    [(is_big, "ndarray"), (lambda row: "yes", "str"), (lambda row: None, "NoneType"), (lambda row: row["x"], "int")],
)
def test_filter_must_return_a_bool(run, pred, got):
    flow = X.filter(pred, name="is_big")
    with pytest.raises(cf.OperatorError, match=f"filter 'is_big' must return a bool, got {got}") as info:
        run(flow, REQ)
    assert info.value.operator == "filter 'is_big'"


def test_filter_with_a_class(run):
    assert run(X.filter(KeepPositive), REQ).column("x") == [1, 3, 4]


def test_filter_to_nothing_keeps_the_schema(run):
    out = run(X.map(double, names={"y": int}).filter(lambda row: False), REQ)
    assert len(out) == 0
    assert out.columns == ("qid", "x", "y")


def test_map_after_filter_sees_only_kept_rows(run):
    out = run(X.filter(is_even).map(double, names={"y": int}), REQ)
    assert records(out) == [{"qid": 1, "x": -2, "y": -4}, {"qid": 3, "x": 4, "y": 8}]


# -- agg ----------------------------------------------------------------------------------------------

G = cf.Flow("groups", k=str, v=int)
GREQ = [{"k": "b", "v": 1}, {"k": "a", "v": 5}, {"k": "b", "v": 3}, {"k": "c", "v": -2}, {"k": "a", "v": 4}]


@pytest.mark.parametrize(
    ("fn", "column", "name", "value", "tp"),
    [
        ("count", None, "count", 5, int),
        ("count", "v", "count", 5, int),
        ("sum", "v", "sum_v", 11, int),
        ("min", "v", "min_v", -2, int),
        ("max", "v", "max_v", 5, int),
        ("mean", "v", "mean_v", 2.2, float),
        ("min", "k", "min_k", "a", str),
    ],
)
def test_agg_over_all_rows(run, fn, column, name, value, tp):
    flow = G.agg(fn, column)
    assert flow.columns == ("qid", name)
    assert flow.schema[name] is tp
    out = run(flow, GREQ)
    assert out.columns == ("qid", name)
    assert len(out) == 1
    assert out[0]["qid"] == 0
    assert out[0][name] == pytest.approx(value)


@pytest.mark.parametrize(
    ("fn", "column", "name", "values"),
    [
        ("count", None, "count", [2, 2, 1]),
        ("sum", "v", "sum_v", [4, 9, -2]),
        ("min", "v", "min_v", [1, 4, -2]),
        ("max", "v", "max_v", [3, 5, -2]),
        ("mean", "v", "mean_v", [2.0, 4.5, -2.0]),
    ],
)
def test_groupby_agg_groups_in_order_of_first_appearance(run, fn, column, name, values):
    out = run(G.groupby("k").agg(fn, column), GREQ)
    assert out.columns == ("qid", "k", name)
    assert out.column("qid") == [0, 1, 2]  # qid = the group's index
    assert out.column("k") == ["b", "a", "c"]
    assert out.column(name) == pytest.approx(values)


def test_groupby_qid_keeps_the_request_qids(run):
    flow = G.filter(lambda row: row["v"] > 0)
    both = flow.union(flow.map(lambda row: row["v"] * 10, names={"v": int}))
    out = run(both.groupby("qid").agg("sum", "v"), GREQ)
    assert out.columns == ("qid", "sum_v")
    assert records(out) == [
        {"qid": 0, "sum_v": 11},
        {"qid": 1, "sum_v": 55},
        {"qid": 2, "sum_v": 33},
        {"qid": 4, "sum_v": 44},
    ]


def test_groupby_on_empty_input_has_no_groups(run):
    out = run(G.groupby("k").agg("count"), [])
    assert len(out) == 0
    assert out.columns == ("qid", "k", "count")


@pytest.mark.parametrize(("fn", "value"), [("count", 0), ("sum", 0), ("min", None), ("max", None), ("mean", None)])
def test_agg_on_empty_input_is_one_row(run, fn, value):
    out = run(G.filter(lambda row: False).agg(fn, "v"), GREQ)
    assert len(out) == 1
    assert out[0]["qid"] == 0
    name = "count" if fn == "count" else f"{fn}_v"
    assert out[0][name] == value


def test_agg_skips_missing_values_but_count_counts_rows(run):
    left = X.filter(lambda row: row["x"] > 0)
    right = X.filter(is_even).map(double, names={"y": int})
    joined = left.join(right, how="left")  # y is None where there was no match
    assert run(joined.agg("count"), REQ)[0]["count"] == 3
    assert run(joined.agg("sum", "y"), REQ)[0]["sum_y"] == 8
    assert run(joined.agg("mean", "y"), REQ)[0]["mean_y"] == 8.0


def test_sum_of_bools_counts_trues(run):
    flow = X.map(lambda row: row["x"] > 0, names={"pos": bool}).agg("sum", "pos")
    assert flow.schema["sum_pos"] is int
    assert run(flow, REQ)[0]["sum_pos"] == 3


# -- lookup -------------------------------------------------------------------------------------------

STORE = {"scale": 10, "user:1": "alice", "user:2": "bob", "vec": np.ones(2)}


def test_static_lookup_adds_the_value_to_every_row(run):
    out = run(X.lookup("scale"), [{"x": 1}, {"x": 2}], store=STORE)
    assert records(out) == [{"qid": 0, "x": 1, "scale": 10}, {"qid": 1, "x": 2, "scale": 10}]


def test_static_lookup_into_a_typed_column(run):
    flow = X.lookup("scale", into="factor", type=int)
    assert flow.schema["factor"] is int
    assert run(flow, [{"x": 1}], store=STORE).column("factor") == [10]


def test_static_lookup_of_an_array(run):
    out = run(X.lookup("vec", type=np.ndarray), [{"x": 1}], store=STORE)
    np.testing.assert_array_equal(out[0]["vec"], np.ones(2))


def test_dynamic_lookup_reads_each_rows_key(run):
    flow = cf.Flow("users", uid=str).lookup("uid", dynamic=True, into="name")
    out = run(flow, [{"uid": "user:2"}, {"uid": "user:1"}], store=STORE)
    assert records(out) == [
        {"qid": 0, "uid": "user:2", "name": "bob"},
        {"qid": 1, "uid": "user:1", "name": "alice"},
    ]


def test_dynamic_lookup_without_into_replaces_the_key_column(run):
    flow = cf.Flow("users", uid=str).lookup("uid", dynamic=True)
    assert run(flow, [{"uid": "user:1"}], store=STORE).column("uid") == ["alice"]


def test_static_lookup_default(run):
    out = run(X.lookup("absent", into="v", default=-1), [{"x": 1}], store=STORE)
    assert out.column("v") == [-1]


def test_dynamic_lookup_default_only_for_missing_keys(run):
    flow = cf.Flow("users", uid=str).lookup("uid", dynamic=True, into="name", default=None)
    out = run(flow, [{"uid": "user:1"}, {"uid": "user:9"}], store=STORE)
    assert out.column("name") == ["alice", None]


def test_static_lookup_missing_key_names_the_key(run):
    with pytest.raises(cf.FlowError, match="absent"):
        run(X.lookup("absent"), [{"x": 1}], store=STORE)


def test_dynamic_lookup_missing_key_names_the_key(run):
    flow = cf.Flow("users", uid=str).lookup("uid", dynamic=True, into="name")
    with pytest.raises(cf.FlowError, match="user:9"):
        run(flow, [{"uid": "user:1"}, {"uid": "user:9"}], store=STORE)


def test_lookup_value_of_the_wrong_type(run):
    with pytest.raises(cf.FlowError, match="expected int"):
        run(X.lookup("user:1", into="n", type=int), [{"x": 1}], store=STORE)


def test_lookup_of_empty_request(run):
    out = run(X.filter(lambda row: False).lookup("absent"), [{"x": 1}], store=STORE)
    assert len(out) == 0


# -- join ---------------------------------------------------------------------------------------------

LEFT = X.filter(lambda row: row["x"] > 0).map(double, names={"l": int})  # qids 0, 2, 3
RIGHT = X.filter(is_even).map(lambda row: f"r{row['x']}", names={"r": str})  # qids 1, 3


def test_inner_join_on_qid(run):
    out = run(LEFT.join(RIGHT), REQ)
    assert out.columns == ("qid", "x", "l", "r")
    assert records(out) == [{"qid": 3, "x": 4, "l": 8, "r": "r4"}]


def test_left_join_fills_missing_with_none(run):
    out = run(LEFT.join(RIGHT, how="left"), REQ)
    assert records(out) == [
        {"qid": 0, "x": 1, "l": 2, "r": None},
        {"qid": 2, "x": 3, "l": 6, "r": None},
        {"qid": 3, "x": 4, "l": 8, "r": "r4"},
    ]


def test_outer_join_right_only_rows_take_key_and_shared_columns_from_the_right(run):
    out = run(LEFT.join(RIGHT, how="outer"), REQ)
    assert out.columns == ("qid", "x", "l", "r")
    assert records(out) == [  # qid order
        {"qid": 0, "x": 1, "l": 2, "r": None},
        {"qid": 1, "x": -2, "l": None, "r": "r-2"},
        {"qid": 2, "x": 3, "l": 6, "r": None},
        {"qid": 3, "x": 4, "l": 8, "r": "r4"},
    ]


def test_join_shared_columns_come_from_the_left(run):
    right = X.map(lambda row: row["x"] + 1000, names={"x": int}).map(lambda row: 1, names={"one": int})
    out = run(X.join(right), [{"x": 1}])
    assert records(out) == [{"qid": 0, "x": 1, "one": 1}]


def test_outer_join_right_only_shared_column_comes_from_the_right(run):
    left = X.filter(lambda row: row["x"] > 0)
    right = X.map(lambda row: row["x"] * 100, names={"x": int}).filter(lambda row: row["x"] < 0)
    out = run(left.join(right, how="outer"), [{"x": 1}, {"x": -1}])
    assert records(out) == [{"qid": 0, "x": 1}, {"qid": 1, "x": -100}]


def test_join_on_another_column(run):
    flow = cf.Flow("kv", k=str, v=int)
    left = flow.filter(lambda row: row["v"] > 0)
    right = flow.filter(lambda row: row["v"] <= 0).map(lambda row: row["v"] * 2, names={"w": int})
    out = run(left.join(right, on="k", how="inner"), [{"k": "a", "v": 1}, {"k": "a", "v": -1}, {"k": "b", "v": 2}])
    assert records(out) == [{"qid": 0, "k": "a", "v": 1, "w": -2}]


def test_join_one_to_many_repeats_the_left_row(run):
    twice = X.union(X.map(lambda row: row["x"] + 1, names={"x": int})).map(lambda row: row["x"], names={"y": int})
    out = run(X.join(twice), [{"x": 1}])
    assert sorted(out.column("y")) == [1, 2]
    assert out.column("qid") == [0, 0]


def test_join_of_empty_sides(run):
    nothing = X.filter(lambda row: False).map(double, names={"y": int})
    assert len(run(X.join(nothing), REQ)) == 0
    assert run(X.join(nothing, how="left"), REQ).column("y") == [None] * len(REQ)
    out = run(nothing.join(X.map(double, names={"z": int}), how="outer"), REQ)
    assert out.column("qid") == [0, 1, 2, 3]
    assert out.column("y") == [None] * 4


# -- union and anyof ----------------------------------------------------------------------------------


def test_union_concatenates_in_argument_order(run):
    a = X.filter(lambda row: row["x"] > 2)
    b = X.filter(lambda row: row["x"] < 2)
    out = run(a.union(b), REQ)
    assert records(out) == [{"qid": 2, "x": 3}, {"qid": 3, "x": 4}, {"qid": 0, "x": 1}, {"qid": 1, "x": -2}]
    out = run(b.union(a), REQ)
    assert out.column("qid") == [0, 1, 2, 3]


def test_union_of_three_and_with_itself(run):
    out = run(X.union(X, X), [{"x": 1}])
    assert out.column("qid") == [0, 0, 0]


def test_anyof_returns_exactly_one_branch_per_request(run):
    fast = X.map(lambda row: "fast", names={"who": str})
    slow = X.map(lambda row: "slow", names={"who": str})
    flow = fast.anyof(slow)
    for request in ([{"x": 1}, {"x": 2}], [{"x": 3}]):
        out = run(flow, request)
        assert len(out) == len(request)
        assert len(set(out.column("who"))) == 1  # never a mix of branches
        assert out == run(fast, request) or out == run(slow, request)


def test_anyof_of_filtered_branches(run):
    a = X.filter(is_even)
    b = X.filter(lambda row: row["x"] > 0)
    out = run(a.anyof(b), REQ)
    assert out in (run(a, REQ), run(b, REQ))


# -- compositions ---------------------------------------------------------------------------------------


def test_ensemble_union_then_groupby_qid_then_max(run):
    flow = cf.Flow("ensemble", x=int)
    models = [flow.map(fn, names={"score": float}) for fn in (score_a, score_b, score_c)]
    best = models[0].union(*models[1:]).groupby("qid").agg("max", "score")
    out = run(best, [{"x": 1}, {"x": 10}, {"x": -4}])
    assert out.columns == ("qid", "max_score")
    assert records(out) == [
        {"qid": 0, "max_score": 7.0},
        {"qid": 1, "max_score": 20.0},
        {"qid": 2, "max_score": 7.0},
    ]


def test_cascade_left_join_of_a_fallback_branch(run):
    flow = cf.Flow("cascade", x=int)
    first = flow.map(lambda row: ("small", 0.9 if row["x"] % 2 else 0.5), names={"label": str, "conf": float})
    unsure = first.filter(lambda row: row["conf"] < 0.85).map(
        lambda row: ("big", 0.99), names={"label2": str, "conf2": float}
    )
    best = first.join(unsure, how="left").map(
        lambda row: row["label2"] if row["conf2"] is not None and row["conf2"] > row["conf"] else row["label"],
        names={"final": str},
    )
    out = run(best, [{"x": 1}, {"x": 2}, {"x": 3}])
    assert out.column("final") == ["small", "big", "small"]
    assert out.column("label2") == [None, "big", None]


def test_parallel_branches_rejoin_on_qid(run):
    flow = cf.Flow("branches", x=int)
    a = flow.map(double, names={"a": int})
    b = flow.map(lambda row: -row["x"], names={"b": int})
    out = run(a.join(b).map(lambda row: row["a"] + row["b"], names={"s": int}), REQ)
    assert out.column("s") == [r["x"] for r in REQ]


def test_requests_are_independent(run):
    flow = X.groupby("qid").agg("count")
    assert run(flow, [{"x": 1}, {"x": 2}]).column("qid") == [0, 1]
    assert run(flow, [{"x": 3}]).column("qid") == [0]


def test_every_output_has_qid_first(run):
    flows = [
        X.map(double, names={"y": int}),
        X.filter(is_even),
        X.agg("count"),
        X.groupby("x").agg("count"),
        X.lookup("scale"),
        X.join(X.map(double, names={"y": int}), how="outer"),
        X.union(X),
        X.anyof(X),
    ]
    for flow in flows:
        out = run(flow, REQ, store=STORE)
        assert out.columns[0] == "qid"
        assert all(isinstance(q, int) for q in out.column("qid"))
