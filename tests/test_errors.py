"""Errors: build-time mistakes, mismatched requests, failing user code, request isolation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import cloudflow_nb as cf
from cloudflow_nb.runtime.local import LocalEngine

X = cf.Flow("xs", x=int, s=str)


def double(row):
    return row["x"] * 2


def explode(row):
    raise ValueError(f"model blew up on {row['x']}")


def explode_on_negative(row):
    if row["x"] < 0:
        raise ValueError("negative input")
    return row["x"]


def batch_explode_on_negative(rows):
    if any(r["x"] < 0 for r in rows):
        raise ValueError("negative input in batch")
    return [r["x"] for r in rows]


class BrokenModel:
    def __init__(self):
        raise OSError("weights file not found")

    def __call__(self, row):
        return 0


def test_hierarchy():
    for cls in (cf.SchemaError, cf.MissingKeyError, cf.OperatorError, cf.OptimizerError, cf.DeploymentError):
        assert issubclass(cls, cf.FlowError)
    assert issubclass(cf.SchemaError, TypeError)
    assert issubclass(cf.MissingKeyError, LookupError)
    assert issubclass(cf.FlowTimeoutError, TimeoutError)


def test_operator_error_pickles_with_its_operator():
    err = cf.OperatorError("map 'f' failed", "map 'f'")
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.operator) == ("map 'f' failed", "map 'f'")


# -- build time -------------------------------------------------------------------------------------

BUILD_ERRORS = {
    "groupby unknown column": (lambda: X.groupby("nope"), ["groupby", "'nope'", "'x'", "'s'"]),
    "unknown aggregate": (lambda: X.agg("avg", "x"), ["agg", "'avg'", "count, sum, min, max, mean"]),
    "grouped unknown aggregate": (lambda: X.groupby("s").agg("median", "x"), ["'median'", "mean"]),
    "agg unknown column": (lambda: X.agg("sum", "nope"), ["agg 'sum'", "'nope'", "'x'"]),
    "grouped agg unknown column": (lambda: X.groupby("s").agg("max", "y"), ["agg 'max'", "'y'", "'x'"]),
    "agg needs a column": (lambda: X.agg("mean"), ["agg 'mean'", "needs a column", "'x'"]),
    "mean of text": (lambda: X.agg("mean", "s"), ["agg 'mean'", "'s'", "str", "int or float"]),
    "dynamic lookup unknown column": (lambda: X.lookup("uid", dynamic=True), ["lookup", "'uid'", "'x'"]),
    "lookup into qid": (lambda: X.lookup("k", into="qid"), ["lookup", "'qid'", "reserved"]),
    "lookup bad key": (lambda: X.lookup(""), ["lookup", "key"]),
    "lookup bad type": (lambda: X.lookup("k", type="int"), ["lookup", "type", "'int'"]),
    "join unknown how": (lambda: X.join(X, how="right"), ["join", "'right'", "inner, left, outer"]),
    "join unknown key": (lambda: X.join(X, on="nope"), ["join", "'nope'", "'x'"]),
    "join key types differ": (
        lambda: X.join(X.map(double, names={"x": float}), on="x"),
        ["join", "'x'", "int", "float"],
    ),
    "join non-flow": (lambda: X.join("other"), ["join", "cf.Flow", "str"]),  # type: ignore[arg-type]
    "join other source": (lambda: X.join(cf.Flow("other", x=int, s=str)), ["join", "'other'", "'xs'"]),
    "union schema mismatch": (
        lambda: X.union(X.map(double, names={"y": int})),
        ["union", "input 1", "column 'y'", "qid: int, x: int, s: str"],
    ),
    "union column type mismatch": (
        lambda: X.union(X.map(double, names={"x": float})),
        ["union", "column 'x' is float in input 1 but int in input 0"],
    ),
    "union other source": (lambda: X.union(cf.Flow("other", x=int, s=str)), ["union", "'other'"]),
    "anyof schema mismatch": (lambda: X.anyof(X.map(double, names="y")), ["anyof", "input 1", "column 'y'"]),
    "union missing column": (
        lambda: X.map(double, names="y").union(X.map(double, names="y"), X),
        ["union", "input 2", "column 'y' is missing from input 2"],
    ),
    "union column order": (
        lambda: X.map(double, names="y").map(double, names="z").union(X.map(double, names="z").map(double, names="y")),
        ["union", "input 1", "different order"],
    ),
    "map qid": (lambda: X.map(double, names=["qid"]), ["map 'double'", "'qid'", "reserved"]),
    "map no names": (lambda: X.map(double, names=[]), ["map 'double'", "at least one"]),
    "map empty name": (lambda: X.map(double, names=[""]), ["map 'double'", "''"]),
    "map duplicate names": (lambda: X.map(double, names=["a", "a"]), ["map 'double'", "duplicate", "'a'"]),
    "map type not a class": (lambda: X.map(double, names={"y": "int"}), ["map 'double'", "'y'", "class"]),
    "map names of bad kind": (lambda: X.map(double, names=5), ["map", "names", "int"]),
    "map name not a string": (lambda: X.map(double, names=[1]), ["map", "names", "1"]),
    "map not callable": (lambda: X.map(42, names="y"), ["map", "fn", "int"]),
    "map flag not bool": (lambda: X.map(double, names="y", gpu="yes"), ["map 'double'", "gpu", "True or False"]),
    "filter not callable": (lambda: X.filter("x > 0"), ["filter", "str"]),
    "source qid": (lambda: cf.Flow("f", qid=int), ["source", "'qid'", "reserved"]),
    "source type not a class": (lambda: cf.Flow("f", x="int"), ["source 'f'", "'x'", "class", "float"]),
    "source empty name": (lambda: cf.Flow("", x=int), ["flow name", "''"]),
}


@pytest.mark.parametrize("case", list(BUILD_ERRORS), ids=list(BUILD_ERRORS))
def test_build_errors_name_operator_column_and_choices(case):
    build, fragments = BUILD_ERRORS[case]
    with pytest.raises(cf.FlowError) as info:
        build()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert message == message.strip()


def test_groupby_validates_immediately():
    with pytest.raises(cf.SchemaError, match="groupby"):
        X.groupby("missing")  # no .agg() needed to see the error


# -- requests that do not match the schema ----------------------------------------------------------

REQUEST_ERRORS = {
    "wrong type": ({"x": "1", "s": "a"}, ["'x'", "int", "str"]),
    "bool for int": ({"x": True, "s": "a"}, ["'x'", "int", "bool"]),
    "float for int": ({"x": 1.5, "s": "a"}, ["'x'", "int", "float"]),
    "none": ({"x": 1, "s": None}, ["'s'", "str"]),
    "missing column": ({"x": 1}, ["missing", "'s'"]),
    "extra column": ({"x": 1, "s": "a", "t": 0}, ["unknown", "'t'", "'x'", "'s'"]),
    "qid given": ({"qid": 0, "x": 1, "s": "a"}, ["'qid'", "reserved"]),
    "second row bad": ([{"x": 1, "s": "a"}, {"x": 2, "s": 3}], ["row 1", "'s'", "str", "int"]),
    "not a request": (3.5, ["dict", "float"]),
}


@pytest.mark.parametrize("case", list(REQUEST_ERRORS), ids=list(REQUEST_ERRORS))
def test_mismatched_requests_name_the_column_and_expected_type(run, case):
    request, fragments = REQUEST_ERRORS[case]
    flow = X.map(double, names={"y": int})
    with pytest.raises(cf.FlowError) as info:
        run(flow, request)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


def test_numpy_scalars_of_the_matching_kind_are_accepted(run):
    flow = cf.Flow("np", i=int, f=float, b=bool)
    out = run(flow, {"i": np.int16(3), "f": np.float32(0.5), "b": np.bool_(True)})
    assert out[0]["i"] == 3
    assert out[0]["f"] == 0.5
    assert out[0]["b"]


def test_int_is_accepted_for_float(run):
    assert run(cf.Flow("f", f=float), {"f": 2})[0]["f"] == 2


@pytest.mark.parametrize("value", [np.float64(1.0), np.bool_(True), "1"])
def test_numpy_scalars_of_another_kind_are_rejected(run, value):
    with pytest.raises(cf.FlowError, match="'i'"):
        run(cf.Flow("np", i=int), {"i": value})


# -- failing user code ------------------------------------------------------------------------------


def test_map_exception_becomes_operator_error_with_cause(run):
    flow = X.map(explode, names={"y": int})
    with pytest.raises(cf.OperatorError) as info:
        run(flow, {"x": 7, "s": "a"})
    err = info.value
    assert isinstance(err, cf.FlowError)
    assert "map 'explode'" in str(err)
    assert "model blew up on 7" in str(err)
    assert err.operator == "map 'explode'"
    assert isinstance(err.__cause__, ValueError)
    assert str(err.__cause__) == "model blew up on 7"


def test_filter_exception_becomes_operator_error(run):
    with pytest.raises(cf.OperatorError, match="filter 'explode'") as info:
        run(X.filter(explode), {"x": 1, "s": "a"})
    assert isinstance(info.value.__cause__, ValueError)


def test_named_operator_is_named_in_the_error(run):
    with pytest.raises(cf.OperatorError, match="map 'resnet'"):
        run(X.map(explode, names="y", name="resnet"), {"x": 1, "s": "a"})


def test_lambda_error_names_the_lambda(run):
    with pytest.raises(cf.OperatorError, match=r"<lambda at test_errors\.py:\d+>") as info:
        run(X.map(lambda row: row["missing"], names="y"), {"x": 1, "s": "a"})
    assert isinstance(info.value.__cause__, KeyError)


def test_batch_exception_becomes_operator_error(run):
    flow = X.map(batch_explode_on_negative, names={"y": int}, batching=True)
    with pytest.raises(cf.OperatorError, match="batch_explode_on_negative") as info:
        run(flow, [{"x": 1, "s": "a"}, {"x": -1, "s": "b"}])
    assert isinstance(info.value.__cause__, ValueError)


def _causes(exc: BaseException) -> list[BaseException]:
    chain = []
    while exc.__cause__ is not None:
        exc = exc.__cause__
        chain.append(exc)
    return chain


def test_class_constructor_failure_is_a_flow_error_with_the_cause(run):
    # a cluster builds replicas when it deploys, so there it may surface as a DeploymentError
    with pytest.raises(cf.FlowError, match="BrokenModel") as info:
        run(X.map(BrokenModel, names="y"), {"x": 1, "s": "a"})
    assert any(isinstance(c, OSError) for c in _causes(info.value))


def test_class_constructor_failure_in_a_local_run_is_an_operator_error():
    with pytest.raises(cf.OperatorError, match=r"map 'BrokenModel': building BrokenModel\(\) failed") as info:
        X.map(BrokenModel, names="y").run({"x": 1, "s": "a"})
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize(
    ("fn", "names", "fragments"),
    [
        (lambda row: "text", {"y": int}, ["'y'", "int", "str"]),
        (lambda row: 1.5, {"y": int}, ["'y'", "int", "float"]),
        (lambda row: True, {"y": float}, ["'y'", "float", "bool"]),
        (lambda row: (1, 2, 3), ["a", "b"], ["2 values", "3 values"]),
        (lambda row: 5, ["a", "b"], ["2 values", "int"]),
        (lambda row: {"a": 1, "c": 2}, ["a", "b"], ["'a'", "'b'", "'c'"]),
    ],
)
def test_map_outputs_are_checked(run, fn, names, fragments):
    with pytest.raises(cf.OperatorError) as info:
        run(X.map(fn, names=names), {"x": 1, "s": "a"})
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("fn", "fragment"),
    [(lambda rows: rows[:1], "one result per row"), (lambda rows: 7, "must return a list")],
)
def test_batching_results_are_checked(run, fn, fragment):
    with pytest.raises(cf.OperatorError, match=fragment):
        run(X.map(fn, names="y", batching=True), [{"x": 1, "s": "a"}, {"x": 2, "s": "b"}])


def test_lookup_without_a_store_is_a_flow_error():
    with pytest.raises(cf.FlowError, match="store"):
        X.lookup("k").run({"x": 1, "s": "a"})


def test_missing_key_is_a_missing_key_error():
    with pytest.raises(cf.MissingKeyError, match="'user:9'"):
        X.lookup("user:9").run({"x": 1, "s": "a"}, store={})


# -- isolation ----------------------------------------------------------------------------------------


def _bind(flow: cf.Flow, request):
    return {flow.source: cf.Table.from_request(request, flow.input_schema)}


@pytest.mark.parametrize("batching", [False, True])
def test_a_failing_request_does_not_affect_the_others(batching):
    fn = batch_explode_on_negative if batching else explode_on_negative
    flow = X.map(fn, names={"y": int}, batching=batching)
    requests = [[{"x": 1, "s": "a"}], [{"x": -1, "s": "b"}, {"x": 5, "s": "c"}], [{"x": 2, "s": "d"}]]
    results = LocalEngine().run_many(flow.node, [_bind(flow, r) for r in requests])
    assert isinstance(results[1], cf.OperatorError)
    assert isinstance(results[1].__cause__, ValueError)
    assert results[0].column("y") == [1]
    assert results[2].column("y") == [2]


def test_the_engine_still_works_after_a_failure(run):
    flow = X.map(explode_on_negative, names={"y": int})
    with pytest.raises(cf.OperatorError):
        run(flow, {"x": -1, "s": "a"})
    assert run(flow, {"x": 3, "s": "a"}).column("y") == [3]
