"""Arrays and tensors through a deployed flow on every path: the fast path, Dask comms (megabyte
calls) and worker to worker (outputs over ``INLINE_LIMIT`` kept on their worker)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

import cloudflow_nb as cf
from cloudflow_nb.runtime.wire import INLINE_LIMIT, decode_table

pytestmark = pytest.mark.cluster


def same(row):
    return row["v"]


def _chain(tp: type, maps: int) -> cf.Flow:
    flow = cf.Flow("payload", v=tp)
    for i in range(maps):
        flow = flow.map(same, names={"v": tp}, name=f"m{i}")
    return flow


def _equal(got: Any, sent: Any) -> bool:
    if isinstance(sent, np.ndarray):
        return isinstance(got, np.ndarray) and got.dtype == sent.dtype and np.array_equal(got, sent)
    import torch

    return type(got) is torch.Tensor and got.dtype == sent.dtype and torch.equal(got, sent)


def _numpy() -> tuple[type, list[Any]]:
    return np.ndarray, [
        np.arange(12, dtype=np.int8),
        np.arange(64_000, dtype=np.float64),  # 500 KB: over INLINE_LIMIT
        np.arange(120_000, dtype=np.float32).reshape(300, 400).T,  # non-contiguous
        np.zeros((0, 3)),
        np.arange(300_000, dtype=np.float64),  # 2.4 MB: a bulky call, over Dask comms
    ]


def _torch() -> tuple[type, list[Any]]:
    torch = pytest.importorskip("torch")  # an optional extra
    return torch.Tensor, [
        torch.arange(12, dtype=torch.int16),
        torch.arange(128_000, dtype=torch.float32),
        torch.arange(60_000, dtype=torch.float64).reshape(200, 300).t(),
        torch.zeros(0, 3),
        torch.arange(600_000, dtype=torch.float32),
    ]


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_arrays_and_tensors_round_trip_fused_and_unfused(serving_cluster, kind: str) -> None:
    tp, values = _numpy() if kind == "numpy" else _torch()
    for fusion in (True, False):
        with serving_cluster.deploy(_chain(tp, 3), optimize=cf.Optimize(fusion=fusion)) as dep:
            fast = dep._router.fast
            calls = fast.calls
            for value in values:
                got = dep.predict({"v": value}, timeout=60)[0]["v"]
                assert _equal(got, value), (kind, fusion, value.dtype, tuple(value.shape))
            assert fast.calls > calls, "small payloads take the fast path"
            assert fast.bulky >= 1, "megabyte payloads take Dask comms"


def _keep(key: str, table: cf.Table, dask_worker: Any) -> None:
    dask_worker.plugins["cloudflow"].results[key] = (table, time.monotonic())


async def _fetch(owner: str, key: str, schema: cf.Schema, dask_worker: Any) -> list[dict[str, Any]]:
    reply = await dask_worker.rpc(owner).cf_fetch(key=key)
    return [dict(row) for row in decode_table(schema, reply["rows"])]


def test_kept_outputs_travel_worker_to_worker(serving_cluster) -> None:
    client = serving_cluster.client
    owner, reader = sorted(client.scheduler_info()["workers"])[:2]
    torch = pytest.importorskip("torch")
    schema = cf.Schema({"a": np.ndarray, "t": torch.Tensor})
    rows = [
        {"qid": 0, "a": np.arange(80_000, dtype=np.float64), "t": torch.arange(70_000, dtype=torch.int32)},
        {"qid": 1, "a": np.arange(40_000, dtype=np.int16)[::2], "t": torch.zeros(0, 2)},
    ]
    table = cf.Table(schema, rows)
    assert sum(r["a"].nbytes + r["t"].nbytes for r in rows) > INLINE_LIMIT
    client.run(_keep, "test/kept", table, workers=[owner])
    try:
        got = client.run(_fetch, owner, "test/kept", schema, workers=[reader])[reader]
    finally:
        client.run(lambda dask_worker: dask_worker.plugins["cloudflow"].results.pop("test/kept", None), workers=[owner])
    for g, r in zip(got, rows, strict=True):
        assert _equal(g["a"], r["a"])
        assert _equal(g["t"], r["t"])
