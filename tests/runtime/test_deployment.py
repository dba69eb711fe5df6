"""Deployments on the session's real LocalCluster (2 CPU workers, 1 GPU-tagged worker)."""

from __future__ import annotations

import asyncio
import os
import time

import distributed
import numpy as np
import pytest

import cloudflow_nb as cf

pytestmark = pytest.mark.cluster

X = cf.Flow("xs", x=int)


def slow_double(row):
    time.sleep(0.002)
    return row["x"] * 2


def fail_on_13(row):
    if row["x"] == 13:
        raise ValueError("unlucky 13")
    return row["x"]


def batch_fail_on_13(rows):
    if any(r["x"] == 13 for r in rows):
        raise ValueError("unlucky 13")
    return [r["x"] for r in rows]


def slow_batch(rows):
    time.sleep(0.02)
    return [r["x"] + 1 for r in rows]


def device_of(row):
    return cf.device()


def worker_pid(row):
    return os.getpid()


def slow_on_marked_worker(row):
    if os.getpid() == row["slow"]:
        time.sleep(3)
    return os.getpid()


def sleepy(row):
    time.sleep(2)
    return 0


def big_array(row):
    return np.full(100_000, row["x"], dtype=np.float64)  # 800 KB: kept on its worker


def array_sum(row):
    return float(row["a"].sum())


def fast_branch(row):
    return 1


def slow_branch(row):
    time.sleep(1)
    return 2


def pids(cluster):
    """Worker address -> process id."""
    return cluster.client.run(os.getpid)


def stage_with(dep, predicate):
    return next(s for s in dep.plan.stages if predicate(s))


def test_predict_submit_and_apredict(serving_cluster):
    with serving_cluster.deploy(X.map(slow_double, names={"y": int})) as dep:
        assert dep.predict({"x": 2}).column("y") == [4]
        assert dep.submit([{"x": 1}, {"x": 5}]).result(timeout=30).column("y") == [2, 10]
        assert asyncio.run(dep.apredict({"x": 7})).column("y") == [14]
        stats = dep.stats()
    assert stats["requests"]["count"] == 3
    (stage,) = stats["stages"].values()
    assert stage["count"] == 3
    assert stage["p50_ms"] > 0
    assert len(stage["replicas"]) == 1


def test_bad_input_is_rejected_before_anything_is_sent(serving_cluster):
    with serving_cluster.deploy(X.map(slow_double, names={"y": int})) as dep:
        with pytest.raises(cf.SchemaError, match="column 'x' expects int"):
            dep.predict({"x": "seven"})
        with pytest.raises(cf.SchemaError, match="unknown column 'z'"):
            dep.submit({"x": 1, "z": 2})
        assert dep.stats()["requests"]["count"] == 0
    with pytest.raises(cf.DeploymentError, match="closed"):
        dep.predict({"x": 1})


def test_concurrent_requests_never_mix(serving_cluster):
    flow = X.map(slow_double, names={"y": int}).filter(lambda row: row["x"] % 3 != 0)
    with serving_cluster.deploy(flow) as dep:
        requests = [[{"x": 100 * i + j} for j in range(1 + i % 4)] for i in range(40)]
        futures = [dep.submit(r) for r in requests]
        for request, future in zip(requests, futures, strict=True):
            assert future.result(timeout=60) == flow.run(request)


@pytest.mark.parametrize(("fn", "batching"), [(fail_on_13, False), (batch_fail_on_13, True)])
def test_user_exception_fails_only_its_own_request(serving_cluster, fn, batching):
    with serving_cluster.deploy(X.map(fn, names={"y": int}, batching=batching)) as dep:
        futures = {x: dep.submit({"x": x}) for x in range(5, 25)}
        for x, future in futures.items():
            if x == 13:
                with pytest.raises(cf.OperatorError, match="unlucky 13") as info:
                    future.result(timeout=60)
                assert isinstance(info.value.__cause__, ValueError)
                assert "fail_on_13" in info.value.operator
            else:
                assert future.result(timeout=60).column("y") == [x]


def test_batching_forms_batches_under_concurrent_load(serving_cluster):
    with serving_cluster.deploy(X.map(slow_batch, names={"y": int}, batching=True)) as dep:
        futures = [dep.submit({"x": i}) for i in range(48)]
        assert [f.result(timeout=60).column("y") for f in futures] == [[i + 1] for i in range(48)]
        (stage,) = dep.stats()["stages"].values()
    assert stage["batching"] == 16
    assert stage["max_batch"] > 1
    assert sum(size * n for size, n in stage["batches"].items()) == 48


def test_gpu_stage_runs_on_the_gpu_worker_and_knows_its_device(serving_cluster):
    gpu_workers = {w.address for w in serving_cluster.workers() if w.gpu}
    flow = X.map(device_of, names={"dev": str}, gpu=True).map(worker_pid, names={"pid": int}, gpu=True)
    with serving_cluster.deploy(flow) as dep:
        out = dep.predict({"x": 1})
        stage = stage_with(dep, lambda s: s.gpu)
        placed = dep.stats()["stages"][stage.name]["replicas"]
    assert out.column("dev") == ["cpu"]  # GPU-tagged, but this machine has no CUDA device
    assert out.column("pid")[0] in {pids(serving_cluster)[w] for w in gpu_workers}
    assert {r["worker"] for r in placed} <= gpu_workers


def test_deploying_a_gpu_stage_without_gpu_workers_fails():
    with cf.LocalCluster(workers=1, gpu_workers=0, processes=False, dashboard=False) as cluster:
        with pytest.raises(cf.DeploymentError, match="needs a GPU but no worker is GPU-tagged"):
            cluster.deploy(X.map(device_of, names="dev", gpu=True))
        assert cluster.deploy(X.map(device_of, names="dev", gpu=True), optimize=cf.Optimize(gpu=False)).predict(
            {"x": 1}
        ).column("dev") == ["cpu"]


def test_competitive_racing_returns_the_first_result(serving_cluster):
    by_worker = pids(serving_cluster)
    slow, fast = (by_worker[w.address] for w in serving_cluster.workers() if not w.gpu)
    serving_cluster.store["slow"] = slow
    try:
        flow = X.lookup("slow", type=int).map(slow_on_marked_worker, names={"pid": int}, high_variance=True)
        with serving_cluster.deploy(flow, optimize=cf.Optimize(compete=2)) as dep:
            stage = stage_with(dep, lambda s: s.competitive)
            assert len({r["worker"] for r in dep.stats()["stages"][stage.name]["replicas"]}) == 2
            for _ in range(3):
                assert dep.predict({"x": 1}, timeout=20).column("pid") == [fast]
    finally:
        del serving_cluster.store["slow"]


def test_every_call_has_a_deadline(serving_cluster):
    with (
        serving_cluster.deploy(X.map(sleepy, names={"y": int})) as dep,
        pytest.raises(cf.FlowTimeoutError, match=r"did not finish within 0\.2 s"),
    ):
        dep.predict({"x": 1}, timeout=0.2)


def test_large_outputs_move_worker_to_worker(serving_cluster):
    flow = X.map(big_array, names={"a": np.ndarray}).map(array_sum, names={"s": float})
    with serving_cluster.deploy(flow, optimize=cf.Optimize(fusion=False)) as dep:
        assert len(dep.plan.stages) == 2
        futures = [dep.submit({"x": i}) for i in range(6)]
        assert [f.result(timeout=60).column("s") for f in futures] == [[100_000.0 * i] for i in range(6)]


def test_anyof_takes_the_first_input_that_arrives(serving_cluster):
    flow = X.map(slow_branch, names={"y": int}).anyof(X.map(fast_branch, names={"y": int}))
    with serving_cluster.deploy(flow, optimize=cf.Optimize(fusion=False)) as dep:
        assert any(s.in_router for s in dep.plan.stages)
        assert dep.predict({"x": 1}).column("y") == [1]


def test_gathered_joins_run_in_the_router_and_answer_like_the_local_engine(serving_cluster):
    small = X.filter(lambda r: r["x"] < 10).map(slow_double, names={"y": int}, name="small")
    odd = X.filter(lambda r: r["x"] % 2 == 1).map(fail_on_13, names={"z": int}, name="odd")
    flow = small.join(odd, how="outer")
    with serving_cluster.deploy(flow) as dep:
        (join,) = [s for s in dep.plan.stages if s.in_router]
        assert join.name == "join"
        for x in (1, 4, 11, 20):
            assert dep.predict({"x": x}) == flow.run({"x": x})
        with pytest.raises(cf.OperatorError, match="unlucky 13"):
            dep.predict({"x": 13})  # a failed input fails the gathered join's request only
        assert dep.predict({"x": 3}) == flow.run({"x": 3})
        stats = dep.stats()["stages"]["join"]
        assert stats["in_router"]
        assert stats["replicas"] == []
        assert stats["count"] == 5


def test_store_is_dict_like_and_knows_where_keys_live(serving_cluster):
    store = serving_cluster.store
    store["t:a"] = np.arange(3)
    store.set("t:b", "two")
    store.update({"t:c": 3, 4: "four"})
    try:
        assert np.array_equal(store["t:a"], np.arange(3))
        assert store.get("t:b") == "two"
        assert store.get("t:zzz", "default") == "default"
        assert "t:c" in store
        assert "t:zzz" not in store
        assert 4 in store
        assert {"t:a", "t:b", "t:c", 4} <= set(store.keys())
        assert len(store) >= 4
        cpu = {w.address for w in serving_cluster.workers() if not w.gpu}
        assert store.location("t:a") in cpu
        assert store.location("t:zzz") is None
        store.delete("t:b")
        with pytest.raises(KeyError):
            store["t:b"]
        with pytest.raises(cf.SchemaError, match="store keys must be str or int"):
            store[("tuple", "key")] = 1
    finally:
        for key in ("t:a", "t:c", 4):
            store.pop(key, None)


def test_dynamic_lookup_runs_where_the_key_lives(serving_cluster):
    store = serving_cluster.store
    store.update({f"user:{i}": np.full(4, i) for i in range(6)})
    try:
        flow = cf.Flow("rec", user=str).lookup("user", dynamic=True, into="vec", type=np.ndarray)
        flow = flow.map(worker_pid, names={"pid": int})
        by_worker = pids(serving_cluster)
        with serving_cluster.deploy(flow) as dep:
            assert stage_with(dep, lambda s: s.locality == "user")
            for i in range(6):
                out = dep.predict({"user": f"user:{i}"})
                assert out.column("pid") == [by_worker[store.location(f"user:{i}")]]
                assert np.array_equal(out.column("vec")[0], np.full(4, i))
            with pytest.raises(cf.MissingKeyError, match="user:99"):
                dep.predict({"user": "user:99"})
    finally:
        store.clear()


def test_connect_never_closes_a_client_it_did_not_create(serving_cluster):
    with distributed.Client(serving_cluster.scheduler_address) as client:
        with cf.connect(client) as cluster, cluster.deploy(X.map(slow_double, names={"y": int})) as dep:
            assert dep.predict({"x": 3}).column("y") == [6]
        assert client.status == "running"
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3
    own = cf.connect(serving_cluster.scheduler_address)
    own.close()
    assert own.client.status == "closed"


def test_cluster_reprs(serving_cluster):
    assert repr(serving_cluster).startswith("<cf.LocalCluster tcp://127.0.0.1:")
    bundle = serving_cluster._repr_mimebundle_()
    assert "3 workers (1 GPU-tagged)" in bundle["text/html"]
