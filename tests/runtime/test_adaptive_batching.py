"""Adaptive batch size on the session's real LocalCluster: a replica measures what batches cost."""

from __future__ import annotations

import time
from typing import Any

import pytest

import cloudflow_nb as cf

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

X = cf.Flow("xs", x=int)


def per_item(rows):  # a CPU model: k rows cost k times one
    time.sleep(0.02 * len(rows))
    return [r["x"] + 1 for r in rows]


def per_batch(rows):  # one process per batch: k rows cost what one costs
    time.sleep(0.02)
    return [r["x"] + 1 for r in rows]


def load(dep: Any, first: int, count: int) -> dict[int, int]:
    """Send ``count`` requests at once, check every answer; the stage's batches by size after."""
    futures = [dep.submit({"x": i}) for i in range(first, first + count)]
    assert [f.result(timeout=120).column("y") for f in futures] == [[i + 1] for i in range(first, first + count)]
    (stage,) = dep.stats()["stages"].values()
    return dict(stage["batches"])


def test_batches_that_cost_k_times_one_call_end_one_call_at_a_time(serving_cluster):
    with serving_cluster.deploy(X.map(per_item, names={"y": int}, batching=True)) as dep:
        load(dep, 0, 48)  # warm-up, a batch, a single call and a batch
        before = load(dep, 48, 64)  # batches until five are timed, then one call at a time
        after = load(dep, 112, 60)
        (stage,) = dep.stats()["stages"].values()
    assert stage["batching"] == 16
    assert stage["adaptive_batching"].startswith("batches do not pay"), stage["adaptive_batching"]
    singles = after.get(1, 0) - before.get(1, 0)
    assert singles >= 30  # the second load ran one call at a time, but for a probe or two


def test_batches_that_cost_one_call_keep_batching(serving_cluster):
    with serving_cluster.deploy(X.map(per_batch, names={"y": int}, batching=True)) as dep:
        load(dep, 0, 48)
        load(dep, 48, 60)
        (stage,) = dep.stats()["stages"].values()
    assert stage["adaptive_batching"].startswith("batches pay"), stage["adaptive_batching"]
    assert stage["mean_batch"] > 1


def test_a_wait_set_by_the_user_keeps_batching(serving_cluster):
    options = cf.Optimize(max_batch_wait_ms=5)
    with serving_cluster.deploy(X.map(per_item, names={"y": int}, batching=True), options) as dep:
        load(dep, 0, 32)
        (stage,) = dep.stats()["stages"].values()
    assert stage["adaptive_batching"] == "fixed: max_batch_wait_ms=5 asks for batches"
    assert stage["mean_batch"] > 1
