"""Adaptive racing on the session's real LocalCluster: racers that slow each other down stop racing,
racers on spare capacity keep racing, and every request is answered either way.

Contention is simulated across worker processes with files in ``tmp_path``: each running call of
the contended stage holds a file there and advances its fixed work at a rate shared with every
call holding one (processor sharing, as two CPU-bound racers on the same cores), so a raced call
takes twice as long as a single one.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

import cloudflow_nb as cf

pytestmark = pytest.mark.cluster

WORK = 0.05  # seconds a contended call takes alone
STEP = 0.002


def contended(row):
    """``WORK`` seconds of work, shared with every contended call running at the same time."""
    me = Path(row["dir"], f"running-{os.getpid()}-{time.monotonic_ns()}")
    me.touch()
    try:
        done = 0.0
        for _ in range(int(WORK / STEP) * 20):  # bounded: 20 calls at once at most
            if done >= WORK:
                break
            running = sum(name.startswith("running-") for name in os.listdir(row["dir"]))
            time.sleep(STEP)
            done += STEP / max(1, running)
    finally:
        me.unlink()
    return row["x"] + 1


def gamma_sleep(row):
    """Sleeps 10 ms x Gamma(3, 1) (mean 30 ms), as the paper's competition benchmark."""
    time.sleep(0.010 * random.gammavariate(3.0, 1.0))
    return row["x"] + 1


def _flow(fn, **flags) -> cf.Flow:
    return cf.Flow("a", x=int, dir=str).map(fn, names={"x": int}, high_variance=True, name="s", **flags)


def _serve(dep: cf.Deployment, tmp_path: Path, calls: int) -> None:
    """``calls`` requests one after the other (the policy learns in its first 20), each answered."""
    for i in range(calls):
        assert dep.predict({"x": i, "dir": str(tmp_path)}, timeout=30)[0]["x"] == i + 1


def test_racers_that_slow_each_other_down_stop_racing(serving_cluster, tmp_path):
    with serving_cluster.deploy(_flow(contended), optimize=cf.Optimize(compete=2)) as dep:
        assert dep.stats()["stages"]["s"]["racing"].startswith("racing as planned, learning")
        _serve(dep, tmp_path, 40)
        stage = dep.stats()["stages"]["s"]
    assert (stage["racers"], stage["count"], stage["errors"]) == (2, 40, 0)
    assert stage["racing"].startswith("does not pay (raced p50 "), stage["racing"]
    assert stage["racing"].endswith(": one replica per call, probing")


def test_racers_on_spare_capacity_keep_racing(serving_cluster, tmp_path):
    flow = _flow(gamma_sleep, releases_gil=True)
    with serving_cluster.deploy(flow, optimize=cf.Optimize(compete=3)) as dep:
        _serve(dep, tmp_path, 100)
        stage = dep.stats()["stages"]["s"]
    assert (stage["racers"], stage["count"], stage["errors"]) == (3, 100, 0)
    assert stage["racing"].startswith("pays: raced p50 "), stage["racing"]
