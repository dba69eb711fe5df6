"""Every placement rule, pinned once, as pure functions (no cluster)."""

from __future__ import annotations

import pytest

import cloudflow_nb as cf
from cloudflow_nb.physical import Stage
from cloudflow_nb.plan import Map, StageInput
from cloudflow_nb.runtime.autoscale import ReplicaLoad, StageLoad, WorkerLoad
from cloudflow_nb.runtime.placement import (
    WorkerInfo,
    eligible_workers,
    most_replicas,
    needs_distinct_workers,
    new_placements,
    place_replicas,
    replicas_to_remove,
    target_replicas,
    worker_capacity,
)
from cloudflow_nb.runtime.routing import ReplicaRef

CPU = [WorkerInfo("tcp://a"), WorkerInfo("tcp://b")]
GPU = [WorkerInfo("tcp://g", gpu=True)]


def stage(**kw: object) -> Stage:
    return Stage("s", StageInput(0, (("qid", int),)), ("source",), (), **kw)  # type: ignore[arg-type]


def test_gpu_stages_go_to_gpu_workers_and_cpu_stages_prefer_untagged() -> None:
    assert eligible_workers(stage(gpu=True), CPU + GPU) == ["tcp://g"]
    assert eligible_workers(stage(), GPU + CPU) == ["tcp://a", "tcp://b"]
    assert eligible_workers(stage(), GPU) == ["tcp://g"]  # no untagged worker: any worker


def test_gpu_stage_without_gpu_workers_is_a_deployment_error_unless_not_strict() -> None:
    with pytest.raises(cf.DeploymentError, match=r"stage 's' needs a GPU but no worker is GPU-tagged"):
        eligible_workers(stage(gpu=True), CPU)
    assert eligible_workers(stage(gpu=True), CPU, strict=False) == []
    with pytest.raises(cf.DeploymentError, match=r"cf\.LocalCluster\(gpu_workers=1\)"):
        new_placements(stage(gpu=True), CPU, [], {})
    assert place_replicas(stage(gpu=True), CPU, [], {}, 2) == []


def test_competitive_and_locality_stages_need_distinct_workers() -> None:
    assert needs_distinct_workers(stage(competitive=True))
    assert needs_distinct_workers(stage(locality="user"))
    assert not needs_distinct_workers(stage(replicas=3))
    # the autoscaler's view of a stage follows the same rule
    assert needs_distinct_workers(StageLoad("s", locality="user"))
    assert not needs_distinct_workers(StageLoad("s", gpu=True))


def test_target_replicas_is_the_plans_with_one_per_worker_for_locality() -> None:
    assert target_replicas(stage(replicas=3), 2) == 3
    assert target_replicas(stage(replicas=3, competitive=True), 2) == 2
    assert target_replicas(stage(locality="user"), 3) == 3


def test_most_replicas_is_one_per_eligible_worker_for_distinct_stages() -> None:
    assert most_replicas(stage(), 2, 4) == 4
    assert most_replicas(stage(competitive=True), 2, 4) == 2
    assert most_replicas(stage(locality="user"), 5, 4) == 4


def test_capacity_is_replicas_per_thread() -> None:
    assert worker_capacity(nthreads=2, replicas_per_worker=3) == 6
    assert worker_capacity(nthreads=0, replicas_per_worker=2) == 2


def test_placement_spreads_by_load_and_fills_only_what_is_missing() -> None:
    assert new_placements(stage(), CPU, [], {"tcp://a": 3}) == ["tcp://b"]
    assert new_placements(stage(), CPU, ["tcp://a"], {}) == []
    assert new_placements(stage(replicas=3), CPU, [], {}) == ["tcp://a", "tcp://b", "tcp://a"]


def test_distinct_workers_first_then_least_loaded() -> None:
    # a worker without this stage's replica wins even when it is busier with other stages
    assert place_replicas(stage(), CPU, ["tcp://a"], {"tcp://a": 1, "tcp://b": 5}, 1) == ["tcp://b"]
    assert place_replicas(stage(), CPU, ["tcp://a", "tcp://b"], {"tcp://a": 4, "tcp://b": 2}, 1) == ["tcp://b"]


def test_distinct_stages_never_share_a_worker() -> None:
    assert new_placements(stage(replicas=3, competitive=True), CPU, [], {}) == ["tcp://a", "tcp://b"]
    assert new_placements(stage(locality="user"), CPU, ["tcp://b"], {}) == ["tcp://a"]
    assert place_replicas(stage(locality="user"), CPU, ["tcp://a", "tcp://b"], {}, 1) == []


def test_capacity_skips_full_workers() -> None:
    full = {"tcp://a": 2, "tcp://b": 2}
    assert place_replicas(stage(), CPU, [], {"tcp://a": 2}, 3, capacity=full) == ["tcp://b", "tcp://b"]
    assert place_replicas(stage(), CPU, [], {"tcp://a": 2}, 1, capacity={"tcp://b": 0}) == ["tcp://a"]


def test_avoided_workers_only_when_nothing_else_fits() -> None:
    # replacing a hung replica on tcp://a: another worker when one fits, even a busier one
    assert new_placements(stage(), CPU, [], {"tcp://b": 3}, avoid={"tcp://a"}) == ["tcp://b"]
    assert new_placements(stage(replicas=2), CPU, ["tcp://b"], {}, avoid={"tcp://a"}) == ["tcp://b"]
    assert new_placements(stage(), CPU[:1], [], {}, avoid={"tcp://a"}) == ["tcp://a"]
    assert place_replicas(stage(competitive=True), CPU, ["tcp://b"], {}, 1, avoid={"tcp://a"}) == ["tcp://a"]


def test_workers_of_either_kind_are_placed() -> None:
    loads = [WorkerLoad("w1", hosted=1), WorkerLoad("w2"), WorkerLoad("g1", gpu=True)]
    assert place_replicas(StageLoad("s", gpu=True), loads, [], {}, 1) == ["g1"]
    assert place_replicas(StageLoad("s"), loads, [], {"w1": 1}, 1) == ["w2"]


def test_removal_takes_the_least_busy_from_the_most_loaded_worker() -> None:
    a1, a2, b = ReplicaRef("s", "1", "tcp://a"), ReplicaRef("s", "2", "tcp://a"), ReplicaRef("s", "3", "tcp://b")
    load = {"tcp://a": 2, "tcp://b": 1}
    assert replicas_to_remove([a1, a2, b], {}, load, 1) == [a2]  # most loaded worker, then the last id
    assert replicas_to_remove([a1, a2, b], {a2: 1}, load, 1) == [a1]
    assert replicas_to_remove([a1, a2, b], {a1: 1, a2: 1}, load, 1) == [b]  # busy replicas stay
    assert replicas_to_remove([a1, a2, b], {}, load, 2) == [a2, b]  # the load follows each removal
    assert replicas_to_remove([a1], {}, load, 3) == [a1]
    assert replicas_to_remove([a1], {}, load, 0) == []
    idle, busy = ReplicaLoad("r0", "w1", 0), ReplicaLoad("r1", "w2", 3)
    assert replicas_to_remove([busy, idle], {busy: 3, idle: 0}, {}, 1) == [idle]


def _releasing(row: object) -> int:
    return 0


def concurrent_stage(**kw: object) -> Stage:
    slot = StageInput(0, (("qid", int),))
    op = Map(slot, _releasing, (("y", int),), releases_gil=True)
    return Stage("s", op, ("source",), (op,), **kw)  # type: ignore[arg-type]


def test_a_concurrent_stages_racers_share_workers_spread_evenly() -> None:
    racing = concurrent_stage(replicas=3, competitive=True)
    assert racing.concurrent
    assert not needs_distinct_workers(racing)
    assert not needs_distinct_workers(StageLoad("s", competitive=True, concurrent=True))
    assert target_replicas(racing, 2) == 3
    assert most_replicas(racing, 2, 4) == 4
    assert new_placements(racing, CPU, [], {}) == ["tcp://a", "tcp://b", "tcp://a"]
