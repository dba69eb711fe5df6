"""Autoscaling on real clusters: replicas follow the load, workers are added and given back, and
Dask's own downscaling never retires a worker hosting replicas.

Each test starts its own small ``LocalCluster`` (they change worker counts). Nothing here asserts
on timings: the tests poll ``dep.stats()`` with generous deadlines.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import cloudflow_nb as cf
from cloudflow_nb.errors import DeploymentError

pytestmark = pytest.mark.cluster

DEADLINE = 45.0


def slow_inc(row):
    time.sleep(0.02)
    return row["x"] + 1


FLOW = cf.Flow("slow", x=int).map(slow_inc, names={"y": int})


def wait_for(what: str, check: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextmanager
def load(dep: cf.Deployment, clients: int = 16) -> Iterator[list[int]]:
    """``clients`` threads sending requests back to back; yields the count of answers so far."""
    stop = threading.Event()
    done = [0]
    errors: list[BaseException] = []

    def client() -> None:
        i = 0
        while not stop.is_set():
            try:
                assert dep.predict({"x": i})[0]["y"] == i + 1
            except BaseException as exc:  # reported below
                errors.append(exc)
                return
            done[0] += 1
            i += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield done
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[0]


def throughput(done: list[int], seconds: float = 1.0) -> float:
    before, start = done[0], time.monotonic()
    time.sleep(seconds)
    return (done[0] - before) / (time.monotonic() - start)


def replicas(dep: cf.Deployment) -> list[dict[str, Any]]:
    (stage,) = dep.stats()["stages"].values()
    return stage["replicas"]


def test_replicas_follow_the_load() -> None:
    with cf.LocalCluster(workers=2, gpu_workers=0, dashboard=False) as cluster, cluster.deploy(FLOW) as dep:
        assert len(replicas(dep)) == 1
        assert dep.stats()["autoscale"]["enabled"] is False
        with load(dep) as done:
            before = throughput(done)
            dep.autoscale(
                max_replicas=4, target_inflight=2, interval=0.2, up_after=2, scale_down_after=1.0, max_workers=0
            )
            wait_for("4 replicas", lambda: len(replicas(dep)) == 4)
            after = throughput(done)
        placed = replicas(dep)
        assert {r["worker"] for r in placed} == {w.address for w in cluster.workers()}  # 2 per worker
        print(f"throughput with 1 replica: {before:.0f}/s, with {len(placed)}: {after:.0f}/s")
        wait_for("back to 1 replica", lambda: len(replicas(dep)) == 1)
        auto = dep.stats()["autoscale"]
        (name,) = auto["stages"]
        assert auto["stages"][name]["replicas"] == auto["stages"][name]["min"] == 1
        actions = [d["action"] for d in auto["decisions"]]
        assert "add-replica" in actions
        assert actions.count("remove-replica") == 3
        assert auto["replicas_added"] == auto["replicas_removed"] == 3
        assert dep.predict({"x": 1})[0]["y"] == 2


def test_full_workers_get_a_new_worker_from_the_cluster() -> None:
    with cf.LocalCluster(workers=1, gpu_workers=0, dashboard=False) as cluster, cluster.deploy(FLOW) as dep:
        (first,) = [w.address for w in cluster.workers()]
        dep.autoscale(
            max_replicas=2,
            replicas_per_worker=1,
            max_workers=1,
            interval=0.2,
            up_after=1,
            scale_down_after=1.0,
            worker_idle_after=1.0,
        )
        with load(dep):
            placed = wait_for("a replica on a new worker", lambda: [r for r in replicas(dep) if r["worker"] != first])
        workers = {w.address for w in cluster.workers()}
        assert len(workers) == 2
        assert placed[0]["worker"] in workers
        auto = dep.stats()["autoscale"]
        assert auto["workers_added"] == 1
        assert "worker-added" in [d["action"] for d in auto["decisions"]]
        # idle again: the replica goes, then the added worker is given back (never the first one)
        wait_for("the added worker given back", lambda: dep.stats()["autoscale"]["workers_removed"] == 1)
        wait_for("one worker left", lambda: [w.address for w in cluster.workers()] == [first])
        assert [r["worker"] for r in replicas(dep)] == [first]
        assert dep.predict({"x": 1})[0]["y"] == 2


def test_downscaling_veto_and_manual_scale() -> None:
    with cf.LocalCluster(workers=2, gpu_workers=0, dashboard=False) as cluster, cluster.deploy(FLOW) as dep:
        (name,) = dep.stats()["stages"]
        dep.scale(name, 3)
        assert len(replicas(dep)) == 3
        assert dep.stats()["autoscale"]["stages"][name] == {"replicas": 3, "target": 1}
        dep.scale(name, 1)
        assert len(replicas(dep)) == 1
        with pytest.raises(DeploymentError, match="at least 1"):
            dep.scale(name, 0)
        with pytest.raises(DeploymentError, match="no remote stage"):
            dep.scale("nope", 2)
        with pytest.raises(DeploymentError, match="max_replicas"):
            dep.autoscale(min_replicas=3, max_replicas=2)
        (host,) = [r["worker"] for r in replicas(dep)]
        # Dask's own downscaling asks to close both workers: the one hosting the replica is vetoed
        retired = cluster.client.retire_workers(n=2)
        assert host not in retired
        assert len(retired) == 1
        wait_for("the other worker gone", lambda: [w.address for w in cluster.workers()] == [host])
        assert dep.predict({"x": 41})[0]["y"] == 42
        assert cluster.client.retire_workers(n=1) == {}
        # connected by address, the client has no .cluster to scale: the autoscaler records that
        with cf.connect(cluster.scheduler_address) as remote, remote.deploy(FLOW) as other:
            other.autoscale(max_replicas=3, replicas_per_worker=1, up_after=1, interval=0.2)
            with load(other):
                wait_for("a failed worker request", lambda: other.stats()["autoscale"]["failures"])
            auto = other.stats()["autoscale"]
            assert auto["scaler"] == "WorkerScaler"
            assert auto["workers_added"] == 0
            reasons = [d["reason"] for d in auto["decisions"] if d["action"] == "failed"]
            assert "no way to add workers" in reasons[0]
            json.dumps(other.stats())
