"""Hypothesis properties: random flows agree with the same steps done in plain Python on lists."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cloudflow_nb as cf

# `run` is function-scoped but stateless, so sharing it across examples is safe
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

COLUMNS = ("x", "y", "z")


@dataclass(frozen=True)
class Affine:
    """A picklable map step: ``target = a * row[source] + b``."""

    source: str
    target: str
    a: int
    b: int

    def __call__(self, row):
        return self.a * row[self.source] + self.b

    def apply(self, record: dict) -> dict:
        return {**record, self.target: self.a * record[self.source] + self.b}


@dataclass(frozen=True)
class Threshold:
    """A picklable filter step: ``row[column] % modulus != residue``."""

    column: str
    modulus: int
    residue: int

    def __call__(self, row):
        return row[self.column] % self.modulus != self.residue

    def keeps(self, record: dict) -> bool:
        return record[self.column] % self.modulus != self.residue


@dataclass(frozen=True)
class BatchAffine:
    """The batching form of :class:`Affine`."""

    step: Affine

    def __call__(self, rows):
        return [self.step(r) for r in rows]


@st.composite
def chains(draw):
    """A list of steps over int columns; maps only read columns that exist by then."""
    present = ["x"]
    steps = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            step = Affine(
                source=draw(st.sampled_from(present)),
                target=draw(st.sampled_from(COLUMNS)),
                a=draw(st.integers(-3, 3)),
                b=draw(st.integers(-5, 5)),
            )
            if step.target not in present:
                present.append(step.target)
            steps.append(("map", step, draw(st.booleans())))
        else:
            column = draw(st.sampled_from(present))
            steps.append(("filter", Threshold(column, draw(st.integers(2, 4)), draw(st.integers(0, 3))), False))
    return steps


requests = st.lists(st.integers(-50, 50), max_size=12)


def build(steps) -> cf.Flow:
    flow = cf.Flow("prop", x=int)
    for kind, step, batching in steps:
        if kind == "map":
            fn = BatchAffine(step) if batching else step
            flow = flow.map(fn, names={step.target: int}, batching=batching)
        else:
            flow = flow.filter(step)
    return flow


def reference(steps, xs: list[int]) -> list[dict]:
    records = [{"qid": i, "x": x} for i, x in enumerate(xs)]
    for kind, step, _ in steps:
        records = [step.apply(r) for r in records] if kind == "map" else [r for r in records if step.keeps(r)]
    return records


@SETTINGS
@given(steps=chains(), xs=requests)
def test_chains_of_maps_and_filters_equal_plain_python(run, steps, xs):
    flow = build(steps)
    out = run(flow, [{"x": x} for x in xs])
    expected = reference(steps, xs)
    assert out.to_records() == expected
    assert out.columns == flow.columns
    assert all(list(r) == list(flow.columns) for r in out)


@SETTINGS
@given(steps=chains(), xs=requests)
def test_explain_is_deterministic(steps, xs):
    assert build(steps).explain(optimized=False) == build(steps).explain(optimized=False)


filter_chains = st.lists(st.builds(Threshold, st.just("x"), st.integers(2, 4), st.integers(0, 3)), max_size=3)


@SETTINGS
@given(branches=st.lists(filter_chains, min_size=2, max_size=4), xs=requests)
def test_union_concatenates_branches_in_argument_order(run, branches, xs):
    flow = cf.Flow("union", x=int)
    flows = []
    for filters in branches:
        branch = flow
        for f in filters:
            branch = branch.filter(f)
        flows.append(branch)
    out = run(flows[0].union(*flows[1:]), [{"x": x} for x in xs])
    expected = [
        {"qid": i, "x": x} for filters in branches for i, x in enumerate(xs) if all(f.keeps({"x": x}) for f in filters)
    ]
    assert out.to_records() == expected


@SETTINGS
@given(
    keep_left=st.sets(st.integers(0, 11)),
    keep_right=st.sets(st.integers(0, 11)),
    how=st.sampled_from(["inner", "left", "outer"]),
    n=st.integers(0, 12),
)
def test_join_on_qid_matches_set_semantics(run, keep_left, keep_right, how, n):
    flow = cf.Flow("join", x=int)
    left = flow.filter(Member(frozenset(keep_left))).map(Affine("x", "l", 1, 1), names={"l": int})
    right = flow.filter(Member(frozenset(keep_right))).map(Affine("x", "r", 2, 0), names={"r": int})
    out = run(left.join(right, how=how), [{"x": i} for i in range(n)])
    in_left = {q for q in range(n) if q in keep_left}
    in_right = {q for q in range(n) if q in keep_right}
    qids = {"inner": in_left & in_right, "left": in_left, "outer": in_left | in_right}[how]
    assert out.column("qid") == sorted(qids)
    for row in out:
        q = row["qid"]
        assert row["x"] == q
        assert row["l"] == (q + 1 if q in in_left else None)
        assert row["r"] == (2 * q if q in in_right else None)


@dataclass(frozen=True)
class Member:
    qids: frozenset

    def __call__(self, row):
        return row["qid"] in self.qids


@SETTINGS
@given(keys=st.lists(st.sampled_from("abcd"), max_size=15))
def test_groupby_count_partitions_the_rows(run, keys):
    out = run(cf.Flow("g", k=str).groupby("k").agg("count"), [{"k": k} for k in keys])
    expected_order = list(dict.fromkeys(keys))
    assert out.column("k") == expected_order
    assert out.column("qid") == list(range(len(expected_order)))
    assert out.column("count") == [keys.count(k) for k in expected_order]
    assert sum(out.column("count")) == len(keys)


@pytest.mark.parametrize("fn", ["sum", "min", "max", "mean"])
@SETTINGS
@given(values=st.lists(st.integers(-100, 100), min_size=1, max_size=15))
def test_aggregates_equal_python(run, fn, values):
    out = run(cf.Flow("a", v=int).agg(fn, "v"), [{"v": v} for v in values])
    python = {"sum": sum, "min": min, "max": max, "mean": lambda vs: sum(vs) / len(vs)}[fn](values)
    assert out[0][f"{fn}_v"] == pytest.approx(python)
