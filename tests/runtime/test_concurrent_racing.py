"""Racing and hedging on the session's real LocalCluster (2 CPU workers, 1 GPU-tagged one).

Each stage function learns whether it is the first of its request's calls by creating a token
file (``O_EXCL``: exactly one call wins it); the others are the slow ones. Files in ``tmp_path``
are the side channel that shows, across worker processes, which calls started and which saw
``CancelledError``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

import cloudflow_nb as cf

pytestmark = pytest.mark.cluster

SLOW = 20.0  # seconds a losing call would sleep if nobody cancelled it


def _claim(row) -> bool:
    """Whether this call is the first of its request (it created the request's token)."""
    try:
        os.close(os.open(os.path.join(row["dir"], f"token-{row['key']}"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def _mark(row, what: str) -> None:
    Path(row["dir"], f"{what}-{row['key']}-{os.getpid()}-{time.monotonic_ns()}").touch()


async def first_fast(row):
    """The first call of a request answers at once; the others sleep until cancelled."""
    _mark(row, "started")
    first = _claim(row)
    try:
        await asyncio.sleep(0.05 if first else SLOW)
    except asyncio.CancelledError:
        _mark(row, "cancelled")
        raise
    return row["x"] + 1


async def never_answers(row):
    try:
        await asyncio.sleep(SLOW)
    except asyncio.CancelledError:
        _mark(row, "cancelled")
        raise
    return 0


def first_fast_releasing(row):
    """Sync, GIL-releasing: the first call of a request answers at once, the others sleep 2 s."""
    _mark(row, "started")
    time.sleep(0.05 if _claim(row) else 2.0)
    return row["x"] + 1


def first_slow(row):
    """The first call of a request takes 3 s: only a hedge answers it quickly (GIL-releasing, so
    the abandoned first call does not hold its replica)."""
    time.sleep(3.0 if _claim(row) else 0.0)
    return row["x"] + 1


def inc(row):
    return row["x"] + 1


def _flow(fn, **flags) -> cf.Flow:
    return cf.Flow("r", x=int, dir=str, key=str).map(fn, names={"x": int}, high_variance=True, name="s", **flags)


def _count(tmp: Path, what: str, key: str) -> int:
    return len(list(tmp.glob(f"{what}-{key}-*")))


def _wait_for(tmp: Path, what: str, key: str, n: int, seconds: float = 15.0) -> int:
    stop = time.monotonic() + seconds
    while _count(tmp, what, key) < n and time.monotonic() < stop:
        time.sleep(0.05)
    return _count(tmp, what, key)


def test_async_stage_races_three_on_two_workers_and_cancels_its_losers(serving_cluster, tmp_path):
    with serving_cluster.deploy(_flow(first_fast), optimize=cf.Optimize(compete=3)) as dep:
        stage = dep.stats()["stages"]["s"]
        assert (stage["concurrent"], stage["competitive"]) == (True, True)
        assert (len(stage["replicas"]), stage["racers"]) == (3, 3)
        assert len({r["worker"] for r in stage["replicas"]}) == 2
        for i in range(4):  # back to back: every race gets its 3 racers, the losers' slots free at once
            start = time.monotonic()
            out = dep.predict({"x": i, "dir": str(tmp_path), "key": f"k{i}"}, timeout=30)
            assert out[0]["x"] == i + 1
            assert time.monotonic() - start < SLOW / 2
            assert _wait_for(tmp_path, "started", f"k{i}", 3) == 3
            assert _wait_for(tmp_path, "cancelled", f"k{i}", 2) == 2


def test_plain_sync_racers_need_a_worker_each(serving_cluster):
    with serving_cluster.deploy(_flow(inc), optimize=cf.Optimize(compete=3)) as dep:
        stage = dep.stats()["stages"]["s"]
        assert (stage["concurrent"], len(stage["replicas"]), stage["racers"]) == (False, 2, 2)


def prep(row):
    return row["x"]


@pytest.mark.parametrize("fused", [False, True], ids=["alone on the loop", "fused, from a thread"])
def test_an_async_call_is_cancelled_at_its_deadline(serving_cluster, tmp_path, fused):
    flow = cf.Flow("d", x=int, dir=str, key=str)
    if fused:  # one stage of a GIL-releasing sync map and the async one: its thread awaits the coroutine
        flow = flow.map(prep, names={"x": int}, releases_gil=True)
    flow = flow.map(never_answers, names={"x": int})
    assert len(flow.optimize().stages) == 1
    with serving_cluster.deploy(flow) as dep:
        with pytest.raises(cf.FlowTimeoutError):
            dep.predict({"x": 1, "dir": str(tmp_path), "key": "late"}, timeout=1.0)
        assert _wait_for(tmp_path, "cancelled", "late", 1) == 1


def test_a_gil_releasing_sync_stage_races_all_and_frees_a_losers_slot_at_once(serving_cluster, tmp_path):
    flow = _flow(first_fast_releasing, releases_gil=True)
    # one call per replica: a loser still sleeping would keep its replica out of the next race
    with serving_cluster.deploy(flow, optimize=cf.Optimize(compete=3), max_inflight=1) as dep:
        assert len(dep.stats()["stages"]["s"]["replicas"]) == 3
        for i in range(3):
            start = time.monotonic()
            dep.predict({"x": i, "dir": str(tmp_path), "key": f"g{i}"}, timeout=30)
            assert time.monotonic() - start < 1.5
            assert _wait_for(tmp_path, "started", f"g{i}", 3) == 3


def test_hedges_are_sent_only_for_slow_calls_and_counted(serving_cluster, tmp_path):
    opts = cf.Optimize(hedge_after=200, compete=2)
    with serving_cluster.deploy(_flow(first_slow, releases_gil=True), optimize=opts) as dep:
        for i in range(3):
            start = time.monotonic()
            assert dep.predict({"x": i, "dir": str(tmp_path), "key": f"h{i}"}, timeout=30)[0]["x"] == i + 1
            assert time.monotonic() - start < 2.5  # the hedge answered, not the 3 s first call
        hedge = dep.stats()["stages"]["s"]["hedge"]
        assert (hedge["after"], hedge["threshold_ms"], hedge["sent"], hedge["won"]) == (200.0, 200.0, 3, 3)
    with serving_cluster.deploy(_flow(inc), optimize=opts) as dep:
        for i in range(5):
            dep.predict({"x": i, "dir": str(tmp_path), "key": f"f{i}"}, timeout=30)
        stats = dep.stats()["stages"]["s"]
        assert stats["hedge"]["sent"] == 0
        assert stats["replica_seconds"] > 0
