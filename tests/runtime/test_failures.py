"""Failures on a real multi-process cluster: ``dask scheduler`` and ``dask worker`` processes.

A worker hosting replicas is killed (SIGKILL) under load: every request must end with a result or
a ``FlowError``, and the lost replicas are re-placed on the survivors.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import distributed
import pytest
from dask_procs import free_port, spawn_dask

import cloudflow_nb as cf

pytestmark = pytest.mark.cluster

X = cf.Flow("xs", x=int)


def slow_inc(row):
    time.sleep(0.01)
    return row["x"] + 1


def device_of(row):
    return cf.device()


@pytest.fixture
def cli_cluster() -> Iterator[tuple[distributed.Client, list[subprocess.Popen[bytes]]]]:
    """A scheduler, two CPU workers and one ``--resources GPU=1`` worker, as separate processes."""
    address = f"tcp://127.0.0.1:{free_port()}"
    procs = [spawn_dask("scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard")]
    try:
        common = ("--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1")
        for i in range(2):
            procs.append(spawn_dask("worker", address, *common, "--name", f"cpu-{i}"))
        procs.append(spawn_dask("worker", address, *common, "--name", "gpu-0", "--resources", "GPU=1"))
        client = distributed.Client(address, timeout=60)
        try:
            client.wait_for_workers(3, timeout=60)
            yield client, procs
        finally:
            client.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)


def test_killed_worker_under_load_every_request_ends(cli_cluster):
    client, _procs = cli_cluster
    flow = X.map(slow_inc, names={"y": int}).map(device_of, names={"dev": str}, gpu=True)
    with cf.connect(client) as cluster, cluster.deploy(flow, optimize=cf.Optimize(fusion=False), max_queue=200) as dep:
        cpu_stage = next(s.name for s in dep.plan.stages if not s.gpu)
        (victim,) = [r["worker"] for r in dep.stats()["stages"][cpu_stage]["replicas"]]
        pid = client.run(os.getpid)[victim]
        futures = [dep.submit({"x": i}, timeout=60) for i in range(150)]
        while sum(f.done() for f in futures) < 10:
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        outcomes = []
        for i, future in enumerate(futures):
            try:
                table = future.result(timeout=90)
            except cf.FlowError as exc:
                outcomes.append(exc)
            else:
                assert table.to_records() == [{"qid": 0, "x": i, "y": i + 1, "dev": "cpu"}]
                outcomes.append(table)
        assert len(outcomes) == 150
        assert sum(isinstance(o, cf.Table) for o in outcomes) > 100
        after = dep.stats()["stages"][cpu_stage]
        assert after["retries"] > 0  # in-flight calls to the dead worker were retried
        assert after["replicas"]
        assert victim not in {r["worker"] for r in after["replicas"]}
        assert dep.predict({"x": 1}, timeout=30).column("y") == [2]
    assert client.status == "running"  # connect() never closes a client it was given
