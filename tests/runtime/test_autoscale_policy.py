"""The autoscaling policy as a state machine: load figures and a clock in, instructions out."""

from __future__ import annotations

import json

import pytest

from cloudflow_nb.runtime.autoscale import (
    AddReplica,
    AddWorker,
    Autoscale,
    AutoscalePolicy,
    RemoveReplica,
    RemoveWorker,
    ReplicaLoad,
    StageLoad,
    WorkerLoad,
)

CPU = [WorkerLoad("w1", nthreads=1), WorkerLoad("w2", nthreads=1)]


def stage(
    name: str = "s", inflight: tuple[int, ...] = (0,), workers: tuple[str, ...] = ("w1",), **kw: object
) -> StageLoad:
    pairs = enumerate(zip(workers, inflight, strict=True))
    replicas = tuple(ReplicaLoad(f"{name}/{i}", w, n) for i, (w, n) in pairs)
    return StageLoad(name, replicas, **kw)  # type: ignore[arg-type]


def hosting(workers: list[WorkerLoad], counts: dict[str, int]) -> list[WorkerLoad]:
    return [WorkerLoad(w.address, w.gpu, w.nthreads, counts.get(w.address, 0), 0, w.added) for w in workers]


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="max_replicas"):
        Autoscale(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="target_inflight"):
        Autoscale(target_inflight=0)
    with pytest.raises(ValueError, match="min_replicas"):
        Autoscale(min_replicas=0)


def test_saturated_stage_grows_after_up_after_looks() -> None:
    policy = AutoscalePolicy(Autoscale(max_replicas=4, target_inflight=2, up_after=2, replicas_per_worker=2))
    hot = stage(inflight=(8,), calls=10)
    assert policy.step(0.0, [hot], hosting(CPU, {"w1": 1})) == []
    out = policy.step(1.0, [hot], hosting(CPU, {"w1": 1}))
    # 8 in flight at 2 per replica wants 4 replicas: 3 more, on workers with room, least loaded first
    assert [type(i) for i in out] == [AddReplica] * 3
    assert [i.worker for i in out if isinstance(i, AddReplica)] == ["w2", "w1", "w2"]
    assert "8 calls in flight on 1 replicas" in out[0].reason
    # with one replica per worker thread, the rest needs a new worker
    policy = AutoscalePolicy(Autoscale(max_replicas=4, up_after=1, replicas_per_worker=1))
    out = policy.step(0.0, [hot], hosting(CPU, {"w1": 1}))
    assert [type(i) for i in out] == [AddReplica, AddWorker]


def test_pending_replicas_count_until_finished() -> None:
    policy = AutoscalePolicy(Autoscale(max_replicas=2, up_after=1, replicas_per_worker=4))
    hot = stage(inflight=(5,))
    (add,) = policy.step(0.0, [hot], hosting(CPU, {"w1": 1}))
    assert isinstance(add, AddReplica)
    assert policy.step(1.0, [hot], hosting(CPU, {"w1": 1})) == []  # the replica is still starting
    assert policy.summary()["stages"]["s"]["starting"] == 1
    policy.finished(add, ok=True)
    assert policy.summary()["replicas_added"] == 1


def test_below_target_does_not_grow() -> None:
    policy = AutoscalePolicy(Autoscale(up_after=1, target_inflight=4))
    for t in range(5):
        assert policy.step(float(t), [stage(inflight=(3,), calls=t)], hosting(CPU, {"w1": 1})) == []


def test_gpu_stage_only_on_gpu_workers_and_asks_for_a_gpu_worker() -> None:
    workers = [WorkerLoad("c1"), WorkerLoad("g1", gpu=True)]
    s = stage(inflight=(6,), workers=("g1",), gpu=True)
    out = AutoscalePolicy(Autoscale(up_after=1, replicas_per_worker=2)).step(0.0, [s], hosting(workers, {"g1": 1}))
    assert out == [AddReplica("s", "g1", out[0].reason), AddWorker(True, "s", out[1].reason)]  # never on c1
    policy = AutoscalePolicy(Autoscale(up_after=1, replicas_per_worker=1))
    (ask,) = policy.step(0.0, [s], hosting(workers, {"g1": 1}))
    assert ask == AddWorker(True, "s", ask.reason)
    assert "GPU-tagged" in ask.reason


@pytest.mark.parametrize("kind", [{"competitive": True}, {"locality": "user"}])
def test_distinct_worker_stage_never_twice_on_a_worker(kind: dict[str, object]) -> None:
    s = stage(inflight=(4, 4), workers=("w1", "w2"), **kind)
    policy = AutoscalePolicy(Autoscale(up_after=1, max_replicas=4, replicas_per_worker=8))
    assert policy.step(0.0, [s], hosting(CPU, {"w1": 1, "w2": 1})) == []  # capped at 2 distinct workers
    assert policy.summary()["stages"]["s"]["max"] == 2
    one = stage(inflight=(8,), workers=("w1",), **kind)
    (add,) = AutoscalePolicy(Autoscale(up_after=1, replicas_per_worker=8)).step(0.0, [one], hosting(CPU, {"w1": 1}))
    assert add == AddReplica("s", "w2", add.reason)


def test_one_worker_request_at_a_time_and_failure_is_recorded() -> None:
    policy = AutoscalePolicy(Autoscale(up_after=1, replicas_per_worker=1, max_replicas=3))
    full = hosting(CPU, {"w1": 1, "w2": 1})
    s = stage(inflight=(10, 10), workers=("w1", "w2"))
    (ask,) = policy.step(0.0, [s], full)
    assert isinstance(ask, AddWorker)
    assert not ask.gpu
    assert policy.step(1.0, [s], full) == []  # one request of a kind at a time
    policy.finished(ask, ok=False, detail="no way to add workers")
    assert policy.step(2.0, [s], full) == []  # not retried at once
    summary = policy.summary(3.0)
    assert summary["failures"] == 1
    assert summary["decisions"][-1]["action"] == "failed"
    assert "no way to add workers" in summary["decisions"][-1]["reason"]
    json.dumps(summary)


def test_max_workers_stops_asking() -> None:
    policy = AutoscalePolicy(Autoscale(up_after=1, replicas_per_worker=1, max_workers=0))
    s = stage(inflight=(10, 10), workers=("w1", "w2"))
    assert policy.step(0.0, [s], hosting(CPU, {"w1": 1, "w2": 1})) == []
    assert policy.step(1.0, [s], hosting(CPU, {"w1": 1, "w2": 1})) == []
    decisions = policy.summary()["decisions"]
    assert [d["action"] for d in decisions] == ["no-room"]  # a standing condition is logged once


def test_idle_stage_shrinks_slowly_to_its_floor() -> None:
    policy = AutoscalePolicy(Autoscale(min_replicas=1, scale_down_after=10))
    workers = hosting(CPU, {"w1": 2, "w2": 1})
    busy = stage(inflight=(1, 0, 0), workers=("w1", "w1", "w2"), calls=5, floor=1)
    idle = stage(inflight=(0, 0, 0), workers=("w1", "w1", "w2"), calls=5, floor=1)
    assert policy.step(0.0, [busy], workers) == []
    assert policy.step(9.0, [idle], workers) == []
    (out,) = policy.step(10.5, [idle], workers)
    assert isinstance(out, RemoveReplica)
    assert out.worker == "w1"  # from the most loaded worker
    assert "idle for 10.5 s" in out.reason
    two = stage(inflight=(0, 0), workers=("w1", "w2"), calls=5, floor=1)
    assert policy.step(15.0, [two], workers) == []  # one removal per scale_down_after
    (out,) = policy.step(21.0, [two], workers)
    assert isinstance(out, RemoveReplica)
    one = stage(inflight=(0,), workers=("w2",), calls=5, floor=1)
    assert policy.step(100.0, [one], workers) == []


def test_new_calls_keep_a_stage_busy() -> None:
    policy = AutoscalePolicy(Autoscale(scale_down_after=5))
    workers = hosting(CPU, {"w1": 1, "w2": 1})
    for t in range(20):
        s = stage(inflight=(0, 0), workers=("w1", "w2"), calls=t)  # calls keep arriving between looks
        assert policy.step(float(t), [s], workers) == []


def test_plan_floor_beats_min_replicas() -> None:
    policy = AutoscalePolicy(Autoscale(min_replicas=1, scale_down_after=0))
    s = stage(inflight=(0, 0), workers=("w1", "w2"), floor=2)
    assert policy.step(0.0, [s], hosting(CPU, {"w1": 1, "w2": 1})) == []
    assert policy.step(50.0, [s], hosting(CPU, {"w1": 1, "w2": 1})) == []


def test_added_worker_given_back_only_when_idle() -> None:
    policy = AutoscalePolicy(Autoscale(worker_idle_after=5))
    workers = [WorkerLoad("w1"), WorkerLoad("w3", added=True, hosted=1), WorkerLoad("w4", added=True)]
    assert policy.step(0.0, [], workers) == []
    assert policy.step(4.0, [], workers) == []
    out = policy.step(5.0, [], workers)
    assert out == [RemoveWorker("w4", out[0].reason)]  # never w1 (not added) nor w3 (hosts a replica)
    assert policy.step(6.0, [], workers) == []  # already being removed
    policy.finished(out[0], ok=True)
    assert policy.summary()["workers_removed"] == 1
    elsewhere = [WorkerLoad("w5", added=True, hosted_elsewhere=1)]
    assert policy.step(100.0, [], elsewhere) == []
    assert policy.step(200.0, [], elsewhere) == []


def test_summary_is_json_friendly() -> None:
    policy = AutoscalePolicy(Autoscale(up_after=1))
    (add,) = policy.step(1.0, [stage(inflight=(4,), p50_ms=21.5)], hosting(CPU, {"w1": 1}))
    policy.finished(add, ok=False, detail="boom")
    summary = policy.summary(2.0)
    assert summary["stages"]["s"]["replicas"] == 1
    assert summary["stages"]["s"]["target"] == 2
    assert [d["action"] for d in summary["decisions"]] == ["add-replica", "failed"]
    assert summary["decisions"][0]["ago_s"] == 1.0
    assert "p50 21.5 ms" in summary["decisions"][0]["reason"]
    assert json.loads(json.dumps(summary)) == summary
