"""Cheap replicas run on the worker's event loop; the first slow batch sends them back to their thread."""

from __future__ import annotations

import time

import pytest

import cloudflow_nb as cf
from cloudflow_nb.runtime.replica import INLINE_AFTER

pytestmark = pytest.mark.cluster


def cost_by_sign(row):
    if row["x"] < 0:
        time.sleep(0.02)
    return row["x"] * 3


def _inline_streaks(cluster, stage):
    def streaks(dask_worker):
        plugin = dask_worker.plugins["cloudflow"]
        return [r._cheap_runs for r in plugin.replicas.values() if r.spec.name == stage]

    return [s for found in cluster.client.run(streaks).values() for s in found]


def test_cheap_stage_goes_inline_and_back(serving_cluster):
    flow = cf.Flow("inline", x=int).map(cost_by_sign, names={"y": int})
    with serving_cluster.deploy(flow, optimize=False) as dep:
        (stage,) = [s.name for s in dep.plan.stages]
        replicas = len(dep.stats()["stages"][stage]["replicas"])
        # a busy machine can stretch a no-op past the budget and restart a streak: keep going
        rounds = 0
        while max(_inline_streaks(serving_cluster, stage)) < INLINE_AFTER and rounds < 20:
            rounds += 1
            for x in range(INLINE_AFTER * replicas + 10):
                assert dep.predict({"x": x})[0]["y"] == 3 * x
        assert max(_inline_streaks(serving_cluster, stage)) >= INLINE_AFTER, f"no inline replica in {rounds} rounds"
        for _ in range(replicas):
            assert dep.predict({"x": -1})[0]["y"] == -3
        assert min(_inline_streaks(serving_cluster, stage)) < INLINE_AFTER
        assert dep.predict([{"x": 1}, {"x": -2}]).column("y") == [3, -6]
