"""Optimizing never changes results: random flows, optimized vs unoptimized, on the local engine."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cloudflow_nb as cf
from cloudflow_nb.runtime.local import LocalEngine
from cloudflow_nb.table import Table

STORE = {"k0": 10, "k1": 20, "k2": 30, "static": 7}


def _x(row: Any) -> int:
    value = row.get("x")
    return value if isinstance(value, int) else 0


def _add(c: int):
    def add(row):
        return _x(row) + c

    return add


def _add_batch(c: int):
    def add_batch(rows):
        return [_x(r) + c for r in rows]

    return add_batch


def _keep(k: int):
    def keep(row):
        return _x(row) % k != 0

    return keep


def _always(row):
    return True


def _key(row):
    return f"k{_x(row) % 4}"


@st.composite
def random_flows(draw: st.DrawFn, same_anyof: bool = False) -> cf.Flow:
    """A flow of 1 to 8 operators drawn from map, filter, join, union, anyof, lookup and agg.

    A deployment's ``anyof`` takes whichever input finishes first; with ``same_anyof`` its inputs
    hold the same rows, so the result does not depend on which one wins.
    """
    pool = [cf.Flow("random", x=int)]
    for i in range(draw(st.integers(1, 8))):
        base = draw(st.sampled_from(pool[-3:]))
        kind = draw(st.sampled_from(["map", "map", "filter", "join", "union", "anyof", "lookup", "dynamic", "agg"]))
        if kind == "map":
            target = draw(st.sampled_from(["x", f"y{i}"]))
            batching, gpu, racing = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
            fn = _add_batch(i) if batching else _add(i)
            new = base.map(fn, names={target: int}, batching=batching, gpu=gpu, high_variance=racing, name=f"m{i}")
        elif kind == "filter":
            new = base.filter(_keep(draw(st.integers(2, 3))), name=f"f{i}")
        elif kind == "join":
            new = base.join(draw(st.sampled_from(pool)), how=draw(st.sampled_from(["inner", "left", "outer"])))
        elif kind == "anyof" and same_anyof:
            new = base.anyof(base.filter(_always, name=f"f{i}"))
        elif kind in ("union", "anyof"):
            same = [f for f in pool if f.schema == base.schema]
            other = draw(st.sampled_from(same))
            new = base.union(other) if kind == "union" else base.anyof(other)
        elif kind == "lookup":
            new = base.lookup("static", into=f"s{i}", type=int)
        elif kind == "dynamic":
            keyed = base.map(_key, names={f"k{i}": str}, name=f"key{i}")
            new = keyed.lookup(f"k{i}", dynamic=True, into=f"v{i}", default=-1, type=int)
        else:
            fn = draw(st.sampled_from(["count", "sum", "min", "max", "mean"])) if "x" in base.schema else "count"
            by = draw(st.sampled_from([None, "qid", *(["x"] if "x" in base.schema else [])]))
            column = None if fn == "count" else "x"
            new = base.agg(fn, column) if by is None else base.groupby(by).agg(fn, column)
        pool.append(new)
    return pool[-1]


options = st.builds(
    cf.Optimize,
    fusion=st.booleans(),
    whole=st.booleans(),
    compete=st.integers(1, 3),
    batching=st.booleans(),
    max_batch_size=st.integers(1, 4),
    gpu=st.booleans(),
    locality=st.booleans(),
    gather=st.booleans(),
)
requests = st.lists(st.builds(dict, x=st.integers(-6, 6)), min_size=1, max_size=4)


def _outcome(run: Any) -> Table | str:
    try:
        return run()
    except cf.FlowError as exc:
        return f"error: {type(exc).__name__}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow=random_flows(), opts=options, request=requests)
def test_optimized_plan_gives_the_same_result(flow: cf.Flow, opts: cf.Optimize, request: list[dict]) -> None:
    plan = flow.optimize(opts)
    table = Table.from_request(request, flow.input_schema)
    expected = _outcome(lambda: flow.run(request, store=STORE))
    actual = _outcome(lambda: LocalEngine(store=STORE).run_plan(plan, table))
    assert actual == expected, plan.explain()


@settings(max_examples=100, deadline=None)
@given(flow=random_flows(), opts=options)
def test_every_plan_renders(flow: cf.Flow, opts: cf.Optimize) -> None:
    plan = flow.optimize(opts)
    assert plan.explain().startswith("physical plan of flow 'random'")
    assert plan.show_graph().source.startswith("digraph")
    view = cf.compare(flow, opts)
    assert "cluster_before" in view.graph().source
    assert str(view).startswith("compare flow 'random'")
    ops = [op for stage in plan.stages for op in stage.operators]
    assert len(ops) == len({id(op) for op in ops}), "an operator is in two stages"


@pytest.mark.cluster
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow=random_flows(same_anyof=True), opts=options, request=requests)
def test_deployed_optimized_plan_gives_the_same_result(
    serving_cluster: Any, flow: cf.Flow, opts: cf.Optimize, request: list[dict]
) -> None:
    expected = _outcome(lambda: flow.run(request, store=STORE))
    serving_cluster.store.update(STORE)
    with serving_cluster.deploy(flow, optimize=opts) as deployment:
        actual = _outcome(lambda: deployment.predict(request, timeout=60))
    assert actual == expected, flow.optimize(opts).explain()
