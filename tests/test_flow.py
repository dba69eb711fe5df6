"""The Flow builder: immutability, schemas, names, inspection, pickling, the local engine's caching."""

from __future__ import annotations

import pickle

import cloudpickle
import graphviz
import numpy as np
import pytest

import cloudflow_nb as cf
from cloudflow_nb.plan import Agg, AnyOf, Filter, Join, Lookup, Map, Source, Union
from cloudflow_nb.runtime.local import LocalEngine


def double(row):
    return row["x"] * 2


def is_even(row):
    return row["x"] % 2 == 0


class Counter:
    """Counts its own constructions, to check classes are built once per engine."""

    built = 0

    def __init__(self):
        type(self).built += 1
        self.calls = 0

    def __call__(self, row):
        self.calls += 1
        return self.calls


@pytest.fixture
def counter():
    Counter.built = 0
    return Counter


X = cf.Flow("xs", x=int)


def test_source_schema_and_name():
    flow = cf.Flow("cascade", img=np.ndarray, user=str)
    assert flow.name == "cascade"
    assert flow.columns == ("qid", "img", "user")
    assert flow.schema == cf.Schema({"img": np.ndarray, "user": str})
    assert flow.input_schema == flow.schema
    assert isinstance(flow.node, Source)
    assert flow.source is flow.node


def test_name_is_positional_only_so_any_column_name_works():
    flow = cf.Flow("people", name=str)
    assert flow.columns == ("qid", "name")
    with pytest.raises(TypeError):
        cf.Flow(name="f")  # type: ignore[call-arg]


def test_source_without_columns():
    assert cf.Flow("empty").columns == ("qid",)


def test_every_operator_returns_a_new_flow_and_leaves_the_old_one_alone():
    before = X.explain(optimized=False)
    derived = [
        X.map(double, names="y"),
        X.filter(is_even),
        X.agg("count"),
        X.groupby("x").agg("count"),
        X.lookup("k"),
        X.join(X),
        X.union(X),
        X.anyof(X),
    ]
    kinds = [Map, Filter, Agg, Agg, Lookup, Join, Union, AnyOf]
    for flow, kind in zip(derived, kinds, strict=True):
        assert isinstance(flow, cf.Flow)
        assert flow is not X
        assert type(flow.node) is kind
        assert flow.source is X.source
        assert flow.name == "xs"
        assert flow.input_schema == X.schema
    assert X.explain(optimized=False) == before
    assert X.columns == ("qid", "x")


def test_map_options_are_recorded():
    flow = X.map(double, names={"y": int}, batching=True, gpu=True, high_variance=True, name="dbl")
    node = flow.node
    assert isinstance(node, Map)
    assert (node.batching, node.gpu, node.high_variance, node.name) == (True, True, True, "dbl")
    assert node.label == "dbl"
    assert node.output_names == ("y",)
    default = X.map(double, names="y").node
    assert (default.batching, default.gpu, default.high_variance, default.label) == (False, False, False, "double")


@pytest.mark.parametrize(
    ("names", "schema"),
    [
        ("y", {"y": object}),
        (["y", "z"], {"y": object, "z": object}),
        (("y",), {"y": object}),
        ({"y": int, "z": np.ndarray}, {"y": int, "z": np.ndarray}),
    ],
)
def test_map_names_become_columns(names, schema):
    flow = X.map(double, names=names)
    assert flow.schema == cf.Schema({"x": int, **schema})


def test_map_replacing_a_column_keeps_its_position():
    flow = cf.Flow("f", a=int, b=int).map(double, names={"a": float})
    assert flow.schema == cf.Schema({"a": float, "b": int})


def test_groupby_returns_a_grouped_flow():
    grouped = X.groupby("x")
    assert isinstance(grouped, cf.GroupedFlow)
    assert repr(grouped) == "<cf.GroupedFlow 'xs' by 'x'>"
    assert grouped.agg("sum", "x").columns == ("qid", "x", "sum_x")


def test_groupby_qid_output_has_no_extra_group_column():
    assert X.groupby("qid").agg("max", "x").columns == ("qid", "max_x")


def test_lookup_schemas():
    assert X.lookup("k").columns == ("qid", "x", "k")
    assert X.lookup("k", into="v", type=float).schema["v"] is float
    assert X.lookup("x", dynamic=True, into="v").columns == ("qid", "x", "v")


def test_join_schema_is_left_then_new_right_columns():
    left = X.map(double, names={"a": int, "b": int})
    right = X.map(double, names={"b": str, "c": float})
    assert left.join(right).schema == cf.Schema({"x": int, "a": int, "b": int, "c": float})


def test_flow_repr_is_one_short_line():
    flow = X.map(double, names={"y": int}).filter(is_even)
    assert repr(flow) == "<cf.Flow 'xs': 2 operators -> (qid: int, x: int, y: int)>"


def test_explain_logical_and_graph_types():
    flow = X.map(double, names={"y": int})
    text = flow.explain(optimized=False)
    assert text.splitlines()[0] == "logical plan of flow 'xs'"
    assert "map double" in text
    graph = flow.show_graph(optimized=False)
    assert isinstance(graph, graphviz.Digraph)
    assert "double" in graph.source


def test_optimize_returns_a_plan():
    plan = X.map(double, names={"y": int}).optimize()
    assert isinstance(plan, cf.Plan)
    assert isinstance(X.map(double, names={"y": int}).explain(), str)


def test_flow_pickles_before_and_after_running():
    flow = X.map(double, names={"y": int}).filter(is_even)
    expected = flow.run([{"x": 1}, {"x": 2}])
    for dumps in (pickle.dumps, cloudpickle.dumps):
        again = pickle.loads(dumps(flow))
        assert again.node == flow.node
        assert again.run([{"x": 1}, {"x": 2}]) == expected


def test_flow_with_lambdas_and_a_used_class_pickles_with_cloudpickle(counter):
    flow = X.map(lambda row: row["x"] + 1, names={"y": int}).map(counter, names={"n": int})
    flow.run({"x": 1})  # builds the class and caches it in the flow's engine
    again = cloudpickle.loads(cloudpickle.dumps(flow))
    assert again.run({"x": 1}).column("y") == [2]


def test_class_is_built_once_per_engine(counter):
    flow = X.map(counter, names={"n": int})
    assert counter.built == 0  # lazy: building the flow loads nothing
    assert flow.run([{"x": 1}, {"x": 2}, {"x": 3}]).column("n") == [1, 2, 3]
    assert flow.run([{"x": 4}]).column("n") == [4]  # the same instance serves the next request
    assert counter.built == 1


def test_engine_warm_up_builds_classes_before_requests(counter):
    flow = X.map(counter, names={"n": int}).filter(is_even)
    engine = LocalEngine()
    engine.warm_up(flow.node)
    assert counter.built == 1
    engine.run(flow.node, {flow.source: cf.Table.from_request({"x": 2}, flow.input_schema)})
    assert counter.built == 1


def test_filter_class_is_built_once(counter):
    class Keep(Counter):
        def __call__(self, row):
            return True

    Keep.built = 0
    flow = X.filter(Keep)
    flow.run([{"x": 1}, {"x": 2}])
    flow.run([{"x": 3}])
    assert Keep.built == 1


def test_lazy_until_asked():
    calls = []
    flow = X.map(lambda row: calls.append(row) or 1, names="y").filter(lambda row: calls.append(row))
    flow.explain(optimized=False)
    flow.show_graph(optimized=False)
    repr(flow)
    assert calls == []
