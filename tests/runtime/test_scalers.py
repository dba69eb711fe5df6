"""Worker scalers on real clusters: ``remove(address)`` gives back exactly that worker.

A backend left to choose (``cluster.scale(n - 1)``) drops its newest worker spec; each test
therefore removes the *first* worker and checks that the others stay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

import distributed
import pytest

import cloudflow_nb as cf
from cloudflow_nb.runtime.cluster import ScaleScaler, SpecScaler

pytestmark = pytest.mark.cluster

DEADLINE = 45.0


def addresses(cluster: cf.Cluster) -> list[str]:
    return sorted(w.address for w in cluster.workers())


def wait_for_workers(cluster: cf.Cluster, expected: list[str]) -> None:
    end = time.monotonic() + DEADLINE
    while addresses(cluster) != sorted(expected):
        if time.monotonic() > end:
            raise AssertionError(f"workers {addresses(cluster)}, expected {sorted(expected)}")
        time.sleep(0.1)


def test_spec_scaler_adds_a_worker_and_removes_exactly_the_one_asked() -> None:
    with cf.LocalCluster(workers=2, gpu_workers=0, dashboard=False) as cluster:
        scaler = cluster._scaler()
        assert isinstance(scaler, SpecScaler)
        first, second = addresses(cluster)
        detail = asyncio.run(scaler.add(gpu=True))
        (added,) = set(addresses(cluster)) - {first, second}
        assert detail == f"gpu-0 at {added}"
        assert scaler.added(added)
        assert not scaler.added(first)
        assert [w.gpu for w in cluster.workers() if w.address == added] == [True]
        asyncio.run(scaler.remove(first))  # an original worker, not the newest spec
        wait_for_workers(cluster, [second, added])
        asyncio.run(scaler.remove(added))
        wait_for_workers(cluster, [second])
        assert not scaler.added(added)
        with cluster.deploy(cf.Flow("inc", x=int).map(lambda row: row["x"] + 1, names=["y"])) as dep:
            assert dep.predict({"x": 1})[0]["y"] == 2


def test_scale_scaler_removes_exactly_the_one_asked() -> None:
    with (
        distributed.LocalCluster(
            n_workers=3,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as backend,
        distributed.Client(backend) as client,
        cf.connect(client) as cluster,
    ):
        scaler = cluster._scaler()
        assert isinstance(scaler, ScaleScaler)
        first, second, third = addresses(cluster)
        asyncio.run(scaler.remove(first))  # a SpecCluster: scale_down by the worker's name
        wait_for_workers(cluster, [second, third])
        # a backend without scale_down: the scheduler retires the worker
        plain = ScaleScaler(client, SimpleNamespace(scale=backend.scale))
        asyncio.run(plain.remove(second))
        wait_for_workers(cluster, [third])
