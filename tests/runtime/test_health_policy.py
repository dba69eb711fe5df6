"""The health policy and the supervisor on their own: no cluster, no clock."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cloudflow_nb.runtime.admission import default_limit, retry_after, with_room
from cloudflow_nb.runtime.health import Drain, HealthPolicy, ReplicaProbe, Serving, Stop
from cloudflow_nb.runtime.supervise import Supervisor

A = Serving("m", "d/m/0", "w1")
B = Serving("m", "d/m/1", "w2")


def idle() -> ReplicaProbe:
    return ReplicaProbe(active=0, running_for=0.0)


def test_a_call_past_the_stage_timeout_drains_its_replica_once():
    policy = HealthPolicy(stage_timeout=2.0)
    busy = {"w1": {A.replica: ReplicaProbe(3, 1.9)}, "w2": {B.replica: idle()}}
    assert policy.step(0.0, [A, B], busy) == []
    hung = {"w1": {A.replica: ReplicaProbe(3, 2.5)}, "w2": {B.replica: idle()}}
    (drain,) = policy.step(1.0, [A, B], hung)
    assert isinstance(drain, Drain)
    assert (drain.replica, drain.worker) == (A.replica, "w1")
    assert "2.5 s" in drain.reason
    assert policy.step(2.0, [B], hung) == []  # still busy: neither drained again nor stopped
    assert policy.summary()["draining"] == [A.replica]


def test_a_drained_replica_stops_when_idle_forgotten_or_too_long_busy():
    policy = HealthPolicy(stage_timeout=1.0, stop_after=10.0)
    policy.step(0.0, [A], {"w1": {A.replica: ReplicaProbe(1, 5.0)}})
    (stop,) = policy.step(1.0, [], {"w1": {A.replica: idle()}})
    assert isinstance(stop, Stop)
    assert stop.reason == "drained and idle"

    policy.step(0.0, [B], {"w2": {B.replica: ReplicaProbe(1, 5.0)}})
    assert policy.step(5.0, [], {"w2": {B.replica: ReplicaProbe(1, 10.0)}}) == []
    (stop,) = policy.step(11.0, [], {"w2": {B.replica: ReplicaProbe(1, 16.0)}})
    assert "still busy" in stop.reason
    assert policy.drained == 2
    assert not policy.draining


def test_a_worker_must_miss_several_probes_in_a_row():
    policy = HealthPolicy(stage_timeout=5.0, probe_failures=3)
    assert policy.step(0.0, [A], {"w1": None}) == []
    assert policy.step(1.0, [A], {"w1": None}) == []
    assert policy.step(2.0, [A], {"w1": {A.replica: idle()}}) == []  # it answered: the count starts again
    assert policy.step(3.0, [A], {"w1": None}) == []
    assert policy.step(4.0, [A], {"w1": None}) == []
    (drain,) = policy.step(5.0, [A], {"w1": None})
    assert "missed 3 health probes" in drain.reason


def test_a_replica_its_worker_forgot_is_drained_and_unprobed_workers_are_left_alone():
    policy = HealthPolicy(stage_timeout=5.0)
    drain, stop = policy.step(0.0, [A, B], {"w1": {}})
    assert isinstance(drain, Drain)
    assert isinstance(stop, Stop)
    assert drain.replica == stop.replica == A.replica
    assert "no longer knows" in drain.reason


def test_stage_timeout_must_be_positive():
    with pytest.raises(ValueError, match="stage_timeout"):
        HealthPolicy(stage_timeout=0)


def test_admission_room_and_retry_after():
    assert with_room(["a", "b", "c"], {"a": 2, "b": 1}, limit=2) == ["b", "c"]
    assert retry_after([0.05] * 10, replicas=1, limit=4) == 1.0  # never under a second
    assert retry_after([2.0] * 10, replicas=2, limit=4) == 4.0


def test_default_limit_leaves_room_for_two_batches():
    import cloudflow_nb as cf

    flow = cf.Flow("f", x=int)
    plain = flow.map(lambda r: r["x"], names=["y"]).optimize(False).stages[0]
    batched = flow.map(lambda rs: [r["x"] for r in rs], names=["y"], batching=True)
    assert default_limit(plain) == 4
    assert default_limit(batched.optimize(cf.Optimize(max_batch_size=32)).stages[0]) == 64


def test_supervised_loop_logs_counts_and_goes_on(caplog):
    rounds: list[int] = []

    async def flaky() -> None:
        rounds.append(len(rounds))
        if len(rounds) % 2:
            raise RuntimeError(f"round {len(rounds)} broke")

    async def scenario() -> Supervisor:
        supervisor = Supervisor("dep")
        supervisor.loop("watch", flaky, 0.001)
        job = supervisor.spawn("once", asyncio.sleep(0, result=1))
        assert await job == 1
        supervisor.spawn("bad", _fail())
        while len(rounds) < 6:
            await asyncio.sleep(0.001)
        assert supervisor.running("watch")
        await supervisor.close()
        assert not supervisor.running("watch")
        return supervisor

    with caplog.at_level(logging.WARNING, logger="cloudflow_nb"):
        supervisor = asyncio.run(scenario())
    assert supervisor.errors["watch"] >= 3
    assert supervisor.errors["bad"] == 1
    assert "broke" in (supervisor.summary()["last_error"] or "") or "bad" in (supervisor.summary()["last_error"] or "")
    assert any("goes on" in r.getMessage() for r in caplog.records)


async def _fail() -> None:
    raise ValueError("one-off job failed")
