"""Replica choice as pure functions."""

from __future__ import annotations

from cloudflow_nb.runtime.routing import LOCALITY_MAX_INFLIGHT, ReplicaRef, choose_racers, choose_replica


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


def test_a_concurrent_stage_races_k_replicas_busy_or_not_spread_over_workers():
    a1, a2, b1 = ReplicaRef("s", "a1", "tcp://a"), ReplicaRef("s", "a2", "tcp://a"), ReplicaRef("s", "b1", "tcp://b")
    assert choose_racers([a1, a2, b1], {}, k=2, shared=True) == [a1, b1]
    assert choose_racers([a1, a2, b1], {}, k=3, shared=True) == [a1, b1, a2]
    # a loser still counted on b1 does not keep it out: the stage runs calls side by side
    assert choose_racers([a1, a2, b1], {b1: 1}, k=3, shared=True) == [a1, a2, b1]
    assert choose_racers([a1, a2, b1], {}, k=3, exclude=[a1], shared=True) == [a2, b1]
