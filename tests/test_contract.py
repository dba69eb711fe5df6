"""The public API contract of DESIGN.md, exercised as written (names code outside the repo relies on)."""

from __future__ import annotations

import asyncio
import concurrent.futures

import numpy as np
import pytest

import cloudflow_nb as cf


def preprocess(row):
    return row["img"].astype(np.float32) / 255.0


class ResNet:
    def __init__(self):
        self.device = cf.device()

    def __call__(self, rows):
        return [("cat" if r["img"].mean() > 0.5 else "dog", float(r["img"].max())) for r in rows]


class Inception:
    def __call__(self, row):
        return "bird", 0.99


def pick_best(row):
    return row["label2"] if row["conf2"] is not None and row["conf2"] > row["conf"] else row["label"]


def cascade() -> cf.Flow:
    flow = cf.Flow("cascade", img=np.ndarray)
    pre = flow.map(preprocess, names=["img"])
    top = pre.map(ResNet, names=["label", "conf"], gpu=True, batching=True)
    low = top.filter(lambda row: row["conf"] < 0.85).map(Inception, names=["label2", "conf2"])
    return top.join(low, how="left").map(pick_best, names=["label"])


IMAGES = [np.full((4, 4), v, dtype=np.uint8) for v in (255, 100, 30)]


def test_local_contract():
    out = cascade()
    one = out.run({"img": IMAGES[0]})
    assert isinstance(one, cf.Table)
    assert one.columns[0] == "qid"
    many = out.run([{"img": a} for a in IMAGES])
    assert many.column("qid") == [0, 1, 2]
    assert many.column("label") == ["cat", "bird", "bird"]
    assert isinstance(out.explain(), str)
    assert "logical plan" in out.explain(optimized=False)
    assert type(out.show_graph(optimized=False)).__name__ == "Digraph"
    plan = out.optimize(cf.Optimize())
    assert isinstance(plan, cf.Plan)
    for stage in plan.stages:
        assert stage.operators
        assert isinstance(stage.gpu, bool)
        assert stage.replicas >= 1
        assert stage.batching is None or stage.batching.max_batch_size >= 1
    assert any(s.gpu for s in plan.stages)
    view = cf.compare(out)
    assert "after" in str(view)
    for shown in (out, plan, many, view):
        assert "text/plain" in shown._repr_mimebundle_(include=None, exclude=None)


def test_lookup_store_in_local_runs():
    flow = cf.Flow("rec", uid=str).lookup("uid", dynamic=True, into="vec")
    assert flow.run({"uid": "user:7"}, store={"user:7": [1, 2]})[0]["vec"] == [1, 2]
    with pytest.raises(cf.FlowError, match="user:8"):
        flow.run({"uid": "user:8"}, store={"user:7": [1, 2]})


@pytest.mark.cluster
def test_cluster_contract(serving_cluster):
    cluster = serving_cluster
    cluster.store["user:7"] = np.arange(3)
    try:
        dep = cluster.deploy(cascade())
        with dep:
            table = dep.predict({"img": IMAGES[0]})
            assert table.column("label") == ["cat"]
            future = dep.submit({"img": IMAGES[1]})
            assert isinstance(future, concurrent.futures.Future)
            assert future.result().column("label") == ["bird"]
            assert asyncio.run(dep.apredict({"img": IMAGES[2]})).column("label") == ["bird"]
            stats = dep.stats()
            assert stats["requests"]["count"] == 3
            assert set(stats["stages"]) == {s.name for s in dep.plan.stages}
        flow = cf.Flow("rec", uid=str).lookup("uid", dynamic=True, into="vec")
        with cluster.deploy(flow, optimize=False) as dep:
            assert list(dep.predict({"uid": "user:7"})[0]["vec"]) == [0, 1, 2]
    finally:
        del cluster.store["user:7"]
