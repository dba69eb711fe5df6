"""The store on a real multi-process cluster (``dask scheduler`` + 3 ``dask worker`` processes):
a worker holding store copies and replicas is killed (SIGKILL) while client threads send dynamic
lookups. No request fails because of it, every key stays readable and gets back to 2 copies. A
cluster that grows from one worker copies the keys it kept once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import distributed
import pytest
from dask_procs import free_port, spawn_dask

import cloudflow_nb as cf

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

KEYS = 30
THREADS = 4
PER_THREAD = 60


def scaled(row):
    time.sleep(0.002)
    return row["v"] * 2


@contextlib.contextmanager
def _cli_cluster(workers: int) -> Iterator[tuple[distributed.Client, Callable[[], None]]]:
    """A scheduler and ``workers`` CPU workers, as separate processes; the second item starts one more."""
    port = str(free_port())
    procs = [spawn_dask("scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard")]

    def add_worker() -> None:
        common = ("--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1")
        procs.append(spawn_dask("worker", f"tcp://127.0.0.1:{port}", *common, "--name", f"cpu-{len(procs) - 1}"))

    try:
        for _ in range(workers):
            add_worker()
        client = distributed.Client(f"tcp://127.0.0.1:{port}", timeout=60)
        try:
            client.wait_for_workers(workers, timeout=60)
            yield client, add_worker
        finally:
            client.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def cli_cluster() -> Iterator[distributed.Client]:
    """A scheduler and three CPU workers, as separate processes."""
    with _cli_cluster(3) as (client, _):
        yield client


def test_a_growing_cluster_copies_keys_kept_on_its_one_worker():
    with _cli_cluster(1) as (client, add_worker), cf.connect(client) as cluster:
        cluster.store.update({f"k:{i}": i for i in range(10)})
        assert all(len(cluster.store.locations(f"k:{i}")) == 1 for i in range(10))
        add_worker()
        client.wait_for_workers(2, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(len(cluster.store.locations(f"k:{i}")) < 2 for i in range(10)):
            time.sleep(0.2)
        assert all(len(set(cluster.store.locations(f"k:{i}"))) == 2 for i in range(10))
        assert all(cluster.store[f"k:{i}"] == i for i in range(10))


def test_killing_a_holder_under_load_loses_no_request_and_no_key(cli_cluster):
    client = cli_cluster
    flow = cf.Flow("rec", user=str).lookup("user", dynamic=True, into="v", type=int).map(scaled, names={"y": int})
    with cf.connect(client) as cluster:
        store = cluster.store
        store.update({f"user:{i}": i for i in range(KEYS)})
        # no locality: most lookups read a copy held on another worker, the case a kill breaks
        with cluster.deploy(flow, optimize=cf.Optimize(locality=False)) as dep:
            (stage,) = dep.plan.stages
            dep.scale(stage.name, 3)
            hosts = {r["worker"] for r in dep.stats()["stages"][stage.name]["replicas"]}
            victim = store.location("user:0")
            assert victim in hosts
            held = [k for k in store if victim in store.locations(k)]
            pid = client.run(os.getpid)[victim]

            outcomes: list[object] = []
            started = threading.Event()

            def send(t: int) -> None:
                for n in range(PER_THREAD):
                    i = (t * PER_THREAD + n) % KEYS
                    try:
                        out = dep.predict({"user": f"user:{i}"}, timeout=60)
                        outcomes.append("ok" if out.column("y") == [2 * i] else out)
                    except cf.FlowError as exc:
                        outcomes.append(exc)
                    if n == 10:
                        started.set()

            threads = [threading.Thread(target=send, args=(t,)) for t in range(THREADS)]
            for thread in threads:
                thread.start()
            assert started.wait(60)
            os.kill(pid, signal.SIGKILL)
            for thread in threads:
                thread.join(timeout=240)
            assert not any(thread.is_alive() for thread in threads)

            lost = [o for o in outcomes if o != "ok"]
            assert len(outcomes) == THREADS * PER_THREAD
            assert lost == [], lost[:3]
            assert dep.predict({"user": held[0]}, timeout=30).column("v") == [int(held[0].split(":")[1])]

        assert all(store[f"user:{i}"] == i for i in range(KEYS))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            copies = {k: set(store.locations(k)) for k in store}
            if all(len(c) == 2 and victim not in c for c in copies.values()):
                break
            time.sleep(0.2)
        assert all(len(c) == 2 and victim not in c for c in copies.values()), copies
        assert len(copies) == KEYS
