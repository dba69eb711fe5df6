"""Async operators: ``async def`` maps and classes with ``async def __call__``, on both engines."""

from __future__ import annotations

import asyncio

import pytest

import cloudflow_nb as cf


async def add_one(row):
    await asyncio.sleep(0.001)
    return row["x"] + 1


class AsyncModel:
    def __init__(self):
        self.offset = 10

    async def __call__(self, row):
        await asyncio.sleep(0)
        return row["x"] + self.offset


async def batch_double(rows):
    return [r["x"] * 2 for r in rows]


async def broken(row):
    raise ValueError("remote model said no")


def test_async_maps_and_classes_run_on_both_engines(run):
    flow = (
        cf.Flow("a", x=int)
        .map(add_one, names={"y": int})
        .map(AsyncModel, names={"z": int})
        .map(batch_double, names={"w": int}, batching=True)
    )
    out = run(flow, [{"x": 1}, {"x": 2}])
    assert [(r["y"], r["z"], r["w"]) for r in out] == [(2, 11, 2), (3, 12, 4)]


def test_an_async_maps_error_names_it(run):
    flow = cf.Flow("b", x=int).map(broken, names={"y": int})
    with pytest.raises(cf.OperatorError, match=r"map 'broken' failed on qid 0: ValueError: remote model said no"):
        run(flow, {"x": 1})


def test_async_maps_run_from_a_running_event_loop():
    flow = cf.Flow("c", x=int).map(add_one, names={"y": int})

    async def inside():  # a notebook cell: the local engine must not nest loops
        return flow.run({"x": 4})

    assert asyncio.run(inside())[0]["y"] == 5
    assert flow.optimize().stages[0].concurrent


def test_explain_marks_async_and_gil_releasing_maps():
    flow = cf.Flow("e", x=int).map(add_one, names={"y": int}).map(lambda r: 1, names={"z": int}, releases_gil=True)
    text = flow.explain(optimized=False)
    assert "map add_one (n0) [async]" in text
    assert "[releases_gil]" in text
