"""The batching queue as a pure state machine: no Dask, no clock."""

from __future__ import annotations

import pytest

from cloudflow_nb.runtime.batcher import Batcher, Run, Sleep, WaitUntil


def test_unbatched_runs_each_item_at_once():
    b = Batcher()
    b.add("a", now=0.0)
    b.add("b", now=0.0)
    assert b.poll(0.0) == Run(["a"])
    assert b.poll(0.0) == Sleep()
    b.finished()
    assert b.poll(0.0) == Run(["b"])


def test_waits_for_the_oldest_item_then_runs_what_is_there():
    b = Batcher(max_size=4, max_wait=0.002)
    b.add("a", now=1.0)
    assert b.poll(1.0) == WaitUntil(1.002)
    b.add("b", now=1.001)
    assert b.poll(1.001) == WaitUntil(1.002)
    assert b.poll(1.002) == Run(["a", "b"])


def test_full_batch_runs_without_waiting():
    b = Batcher(max_size=2, max_wait=10.0)
    b.add(1, now=0.0)
    b.add(2, now=0.0)
    b.add(3, now=0.0)
    assert b.poll(0.0) == Run([1, 2])
    b.finished()
    assert b.poll(0.0) == WaitUntil(10.0)


def test_arrivals_during_a_batch_form_the_next_one():
    b = Batcher(max_size=8, max_wait=0.001)
    b.add("a", now=0.0)
    assert b.poll(0.001) == Run(["a"])
    for i in range(3):
        b.add(i, now=0.002)
    assert b.poll(0.005) == Sleep()  # busy
    b.finished()
    assert b.poll(0.005) == Run([0, 1, 2])


def test_drop_removes_cancelled_items_in_order():
    b = Batcher(max_size=8, max_wait=1.0)
    for i in range(5):
        b.add(i, now=0.0)
    assert b.drop(lambda i: i % 2 == 0) == [0, 2, 4]
    assert len(b) == 2
    assert b.poll(1.0) == Run([1, 3])


def test_empty_batcher_sleeps_and_rejects_bad_sizes():
    assert Batcher(max_size=3).poll(0.0) == Sleep()
    with pytest.raises(ValueError, match="max_size"):
        Batcher(max_size=0)
