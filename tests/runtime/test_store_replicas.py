"""The replicated store on an embedded cluster: copies on distinct workers, reads that survive a
killed holder, and lookup stages that never block a worker's event loop."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

import cloudflow_nb as cf
from cloudflow_nb.runtime.replica import INLINE_AFTER

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[cf.LocalCluster]:
    with cf.LocalCluster(workers=3, gpu_workers=0, dashboard=False) as c:
        yield c


def _kill(cluster: cf.LocalCluster, address: str) -> None:
    os.kill(cluster.client.run(os.getpid)[address], signal.SIGKILL)


def _wait(predicate, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _live(cluster: cf.LocalCluster) -> set[str]:
    return {w.address for w in cluster.workers()}


def test_a_remote_read_on_the_worker_loop_raises_instead_of_blocking(cluster):
    store = cluster.store
    store.replicas = 1
    try:
        store.update({f"loop:{i}": i for i in range(6)})

        async def read_all(dask_worker):
            view = dask_worker.plugins["cloudflow"].view
            errors = []
            for i in range(6):
                try:
                    view[f"loop:{i}"]
                except cf.FlowError as exc:
                    errors.append(str(exc))
            return errors

        answers = cluster.client.run(read_all)
        assert all(len(errors) == 4 for errors in answers.values())  # 6 keys, 2 held locally
        assert all("worker's event loop" in e for errors in answers.values() for e in errors)
    finally:
        store.clear()
        store.replicas = 2


def test_a_cheap_lookup_stage_keeps_answering_remote_reads(cluster):
    store = cluster.store
    store.replicas = 1
    try:
        store.update({f"u:{i}": i * 10 for i in range(9)})
        flow = cf.Flow("users", user=str).lookup("user", dynamic=True, into="v", type=int)
        with cluster.deploy(flow, optimize=cf.Optimize(locality=False)) as dep:
            (stage,) = dep.plan.stages
            (home,) = [r["worker"] for r in dep.stats()["stages"][stage.name]["replicas"]]
            local = [k for k in store if store.location(k) == home]
            remote = [k for k in store if store.location(k) != home]
            assert local
            assert remote
            for i in range(3 * INLINE_AFTER):  # cheap batches: before the fix this stage went inline
                key = local[i % len(local)]
                assert dep.predict({"user": key}, timeout=30).column("v") == [store[key]]
            futures = [dep.submit({"user": remote[i % len(remote)]}, timeout=30) for i in range(40)]
            assert [f.result(timeout=60).column("v")[0] for f in futures] == [
                store[remote[i % len(remote)]] for i in range(40)
            ]
    finally:
        store.clear()
        store.replicas = 2


def test_values_are_kept_twice_and_survive_a_killed_holder(cluster):
    store = cluster.store
    assert store.replicas == 2
    values = {f"r:{i}": list(range(i)) for i in range(12)}
    store.update(values)
    try:
        for key in values:
            holders = store.locations(key)
            assert len(set(holders)) == 2
            assert set(holders) <= _live(cluster)
            assert store.location(key) == holders[0]
        victim = store.location("r:0")
        _kill(cluster, victim)
        for key, value in values.items():  # the copies on the survivors answer at once
            assert store[key] == value
        assert _wait(lambda: victim not in _live(cluster))

        def back_to_two() -> bool:
            live = _live(cluster)
            return all(len(set(store.locations(k)) & live) == 2 for k in values)

        assert _wait(back_to_two), {k: store.locations(k) for k in values}
        assert all(store[k] == v for k, v in values.items())
    finally:
        store.clear()


def test_a_key_whose_every_copy_is_gone_is_missing(cluster):
    store = cluster.store
    with pytest.raises(cf.SchemaError, match="store replicas must be an int >= 1, got 0"):
        store.replicas = 0
    store.replicas = 1
    try:
        store["solo"] = "only copy"
        holder = store.location("solo")
        _kill(cluster, holder)
        assert _wait(lambda: "solo" not in store)
        with pytest.raises(KeyError):
            store["solo"]
        flow = cf.Flow("solo", key=str).lookup("key", dynamic=True, into="v", type=str)
        with cluster.deploy(flow) as dep, pytest.raises(cf.MissingKeyError, match="'solo'"):
            dep.predict({"key": "solo"}, timeout=30)
    finally:
        store.clear()
        store.replicas = 2


def test_more_replicas_are_made_at_once(cluster):
    store = cluster.store
    store.update({f"g:{i}": i for i in range(6)})
    try:
        assert _wait(lambda: len(_live(cluster)) == 3)
        store.replicas = 3
        assert _wait(lambda: all(len(set(store.locations(f"g:{i}"))) == 3 for i in range(6)))
        assert all(store[f"g:{i}"] == i for i in range(6))
    finally:
        store.clear()
        store.replicas = 2
