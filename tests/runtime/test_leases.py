"""Leases on real ``dask scheduler``/``dask worker`` processes: a killed client's replicas are
dropped within its lease, detached deployments outlive their creator and are shared by name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import dask
import distributed
import pytest
from dask_procs import free_port, spawn_dask

import cloudflow_nb as cf

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LEASE = 2.0

CLIENT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import cloudflow_nb as cf

    class Big:
        def __init__(self):
            self.weights = np.ones(20_000_000)  # 160 MB held by the replica

        def __call__(self, row):
            return row["x"] + 1

    if __name__ == "__main__":
        address, name, detached = sys.argv[1], sys.argv[2], sys.argv[3] == "detached"
        cluster = cf.connect(address)
        flow = cf.Flow(name, x=int).map(Big, names={"y": int})
        dep = cluster.deploy(flow, name=name, detached=detached)
        assert dep.predict({"x": 1}).column("y") == [2]
        print("ready", flush=True)
        if detached:
            cluster.close()  # detaches only
        else:
            time.sleep(600)
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "DASK_CLOUDFLOW__LEASE": str(LEASE)}


@pytest.fixture
def address() -> Iterator[str]:
    """A scheduler and two workers as separate processes; the scheduler's address."""
    port = free_port()
    lease = {"DASK_CLOUDFLOW__LEASE": str(LEASE)}
    procs = [spawn_dask("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard", env=lease)]
    target = f"tcp://127.0.0.1:{port}"
    common = ("--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1")
    procs += [spawn_dask("worker", target, *common, env=lease) for _ in range(2)]
    try:
        with distributed.Client(target, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield target
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)


def _client(tmp_path: Path, address: str, name: str, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    proc = subprocess.Popen(
        [sys.executable, str(script), address, name, mode], env=_env(), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _replicas(client: distributed.Client) -> list[str]:
    hosted = client.run(lambda dask_worker: list(dask_worker.plugins["cloudflow"].replicas))
    return sorted(r for ids in hosted.values() for r in ids)


def test_a_killed_clients_replicas_are_dropped_within_its_lease(address, tmp_path):
    proc = _client(tmp_path, address, "orphan", "attached")
    with distributed.Client(address, timeout=30) as client, cf.connect(client) as cluster:
        assert any(r.startswith("orphan") for r in _replicas(client))
        assert [n for n in cluster.deployments() if n.startswith("orphan")]
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        while _replicas(client) or cluster.deployments():
            assert time.monotonic() - killed < 30, "the dead client's replicas outlived its lease"
            time.sleep(0.1)
        gone_after = time.monotonic() - killed
        print(f"replicas of a SIGKILLed client gone after {gone_after:.2f} s (lease {LEASE:g} s)")
        assert gone_after >= LEASE * 0.5  # not before its lease could have run out


def test_a_detached_deployment_outlives_its_creator_and_is_shared_by_name(address, tmp_path):
    proc = _client(tmp_path, address, "shared", "detached")
    assert proc.wait(timeout=60) == 0
    time.sleep(LEASE * 1.5)  # the creator is gone for longer than a lease
    with dask.config.set({"cloudflow.lease": LEASE}), cf.connect(address) as one, cf.connect(address) as two:
        assert "shared" in one.deployments()
        a, b = one.deployment("shared"), two.deployment("shared")
        assert a.detached
        assert a.predict({"x": 1}).column("y") == [2]
        assert b.predict({"x": 41}).column("y") == [42]
        with pytest.raises(cf.DeploymentError, match="shared"):
            one.deploy(cf.Flow("shared", x=int).map(lambda r: r["x"], names=["y"]), name="shared")
        a.close()  # detaches one client only
        assert b.predict({"x": 2}).column("y") == [3]
        with distributed.Client(address, timeout=30) as client:
            assert _replicas(client)
            two.close_deployment("shared")
            deadline = time.monotonic() + 30
            while _replicas(client):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert "shared" not in one.deployments()
        with pytest.raises(cf.DeploymentError, match="no deployment named"):
            one.deployment("shared")
