"""Placement and replica choice as pure functions."""

from __future__ import annotations

import pytest

import cloudflow_nb as cf
from cloudflow_nb.physical import Stage
from cloudflow_nb.plan import StageInput
from cloudflow_nb.runtime.routing import (
    LOCALITY_MAX_INFLIGHT,
    ReplicaRef,
    WorkerInfo,
    choose_racers,
    choose_replica,
    eligible_workers,
    new_placements,
)

CPU = [WorkerInfo("tcp://a"), WorkerInfo("tcp://b")]
GPU = [WorkerInfo("tcp://g", gpu=True)]


def stage(**kw):
    return Stage("s", StageInput(0, (("qid", int),)), ("source",), (), **kw)


def test_gpu_stages_go_to_gpu_workers_and_cpu_stages_prefer_untagged():
    assert eligible_workers(stage(gpu=True), CPU + GPU) == ["tcp://g"]
    assert eligible_workers(stage(), CPU + GPU) == ["tcp://a", "tcp://b"]
    assert eligible_workers(stage(), GPU) == ["tcp://g"]


def test_gpu_stage_without_gpu_workers_is_a_deployment_error():
    with pytest.raises(cf.DeploymentError, match=r"stage 's' needs a GPU but no worker is GPU-tagged"):
        eligible_workers(stage(gpu=True), CPU)


def test_placement_spreads_by_load_and_fills_only_what_is_missing():
    assert new_placements(stage(), CPU, [], {"tcp://a": 3}) == ["tcp://b"]
    assert new_placements(stage(), CPU, ["tcp://a"], {}) == []
    assert new_placements(stage(replicas=3), CPU, [], {}) == ["tcp://a", "tcp://b", "tcp://a"]


def test_competitive_and_locality_stages_use_distinct_workers():
    assert new_placements(stage(replicas=3, competitive=True), CPU, [], {}) == ["tcp://a", "tcp://b"]
    assert new_placements(stage(locality="user"), CPU, ["tcp://b"], {}) == ["tcp://a"]


def test_choose_least_busy_round_robin_and_excluded():
    a, b = ReplicaRef("s", "1", "tcp://a"), ReplicaRef("s", "2", "tcp://b")
    assert choose_replica([a, b], {a: 2, b: 0}) is b
    assert {choose_replica([a, b], {}, turn=t) for t in range(2)} == {a, b}
    assert choose_replica([a, b], {}, exclude=[a, b]) is None


def test_locality_prefers_the_key_owner_unless_overloaded():
    a, b = ReplicaRef("s", "1", "tcp://a"), ReplicaRef("s", "2", "tcp://b")
    assert choose_replica([a, b], {a: 3}, prefer="tcp://a") is a
    assert choose_replica([a, b], {a: LOCALITY_MAX_INFLIGHT}, prefer="tcp://a") is b


def test_racers_are_on_distinct_workers():
    a1, a2, b = ReplicaRef("s", "1", "tcp://a"), ReplicaRef("s", "2", "tcp://a"), ReplicaRef("s", "3", "tcp://b")
    racers = choose_racers([a1, a2, b], {}, k=3)
    assert len(racers) == 2
    assert {r.worker for r in racers} == {"tcp://a", "tcp://b"}


def test_racers_are_idle_replicas_while_any_is_idle():
    a, b, c = (ReplicaRef("s", str(i), f"tcp://{w}") for i, w in enumerate("abc"))
    assert choose_racers([a, b, c], {a: 1}, k=3) == [b, c]
    assert choose_racers([a, b, c], {a: 1, b: 0, c: 2}, k=3) == [b]
    assert choose_racers([a, b, c], {a: 2, b: 1, c: 1}, k=2) == [b, c]
    assert choose_racers([a, b, c], {}, k=3, exclude=[b]) == [a, c]
