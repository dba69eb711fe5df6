"""The adaptive batch size as a pure policy: made-up durations, no Dask, no clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cloudflow_nb.physical import Batching
from cloudflow_nb.runtime.batcher import Batcher, Run
from cloudflow_nb.runtime.batchsize import MIN_BATCHES, PROBE_EVERY, BatchSizer, adaptive_batching, describe


def serve(sizer: BatchSizer, cost: Callable[[int], float], batches: int) -> list[int]:
    """Run ``batches`` batches with an endless queue; the sizes taken."""
    sizes = []
    for _ in range(batches):
        size = sizer.size()
        sizes.append(size)
        sizer.finished(size, cost(size))
    return sizes


def linear(size: int) -> float:
    return 0.05 * size  # a CPU model: k images cost k times one


def constant(size: int) -> float:
    return 0.05  # one process per batch: a batch costs what one line costs


def test_linear_cost_ends_one_at_a_time_after_enough_batches():
    sizer = BatchSizer(max_size=16)
    sizes = serve(sizer, linear, 3 * PROBE_EVERY)
    # a batch to warm up, one to measure, a single call to compare, then batches until MIN_BATCHES
    assert sizes[: 2 + MIN_BATCHES] == [16, 16, 1] + [16] * (MIN_BATCHES - 1)
    assert not sizer.pays
    assert sizer.ratio == pytest.approx(1.0)
    rest = sizes[2 + MIN_BATCHES :]
    assert rest.count(16) == 2  # one full-batch probe every PROBE_EVERY batches
    assert rest.count(1) == len(rest) - 2


def test_strong_economy_of_scale_keeps_full_batches():
    sizer = BatchSizer(max_size=16)
    sizes = serve(sizer, constant, 3 * PROBE_EVERY)
    assert sizer.pays
    assert sizer.ratio == pytest.approx(1 / 16)
    assert sizes.count(1) == 3  # the first comparison, then a single-call probe now and then
    assert sizes.count(16) == len(sizes) - 3


def test_a_slow_first_call_is_not_counted():
    sizer = BatchSizer(max_size=16)
    sizer.finished(1, 5.0)  # one request at first: a model's first inference
    serve(sizer, linear, 2 * PROBE_EVERY)
    assert not sizer.pays


def test_a_change_in_cost_is_noticed_after_a_few_probes():
    sizer = BatchSizer(max_size=8)
    serve(sizer, linear, PROBE_EVERY)
    assert not sizer.pays
    sizes = serve(sizer, constant, 3 * PROBE_EVERY)  # the stage became cheap per batch (a GPU)
    assert sizer.pays == (sizes[-1] == 8)
    assert not sizer.pays  # three probes are not yet a median
    sizes = serve(sizer, constant, 2 * PROBE_EVERY)
    assert sizer.pays
    assert sizes[-1] == 8
    sizes = serve(sizer, linear, PROBE_EVERY)  # and expensive again: every batch is a timing now
    assert not sizer.pays
    assert sizes[-1] == 1


def test_one_slow_batch_among_cheap_ones_does_not_end_batching():
    sizer = BatchSizer(max_size=8)
    serve(sizer, constant, 2 * PROBE_EVERY)
    assert sizer.pays
    sizer.finished(8, 0.05 * 8 * 3)  # a batch that ran while the machine was busiest: 3x a call per item
    assert sizer.pays
    assert sizer.size() == 8


def test_batches_that_seldom_form_keep_batching():
    sizer = BatchSizer(max_size=8)
    sizer.finished(1, 0.05)  # warm-up
    for _ in range(MIN_BATCHES - 1):  # light load: one call at a time, a pair now and then, slower
        for _ in range(30):
            sizer.finished(1, 0.05)
        sizer.finished(2, 0.3)
    assert sizer.ratio is None
    assert sizer.pays


def test_a_small_economy_is_not_worth_the_wait():
    sizer = BatchSizer(max_size=8)
    serve(sizer, lambda size: 0.05 * size * (0.9 if size > 1 else 1.0), 2 * PROBE_EVERY)
    assert sizer.ratio == pytest.approx(0.9)
    assert not sizer.pays  # 10% cheaper is inside the margin


def test_a_full_batch_probe_waits_for_a_queue_to_batch():
    sizer = BatchSizer(max_size=8)
    serve(sizer, linear, PROBE_EVERY)
    while sizer.size() == 1:
        sizer.finished(1, 0.05)
    for _ in range(3):  # only one item waits each time: the probe stays due
        assert sizer.size() == 8
        sizer.finished(1, 0.05)
    sizer.finished(8, 0.4)
    assert sizer.size() == 1


def test_the_batcher_takes_what_the_sizer_says():
    b = Batcher(max_size=4, adapt=True)
    for i in range(12):
        b.add(i, now=0.0)
    assert b.poll(0.0) == Run([0, 1, 2, 3])
    b.finished(0.4)  # warm-up
    assert b.poll(0.0) == Run([4, 5, 6, 7])
    b.finished(0.4)  # 0.1 s per item
    assert b.poll(0.0) == Run([8])
    b.finished(0.1)  # the same alone, but one batch does not decide: batches go on
    assert b.poll(0.0) == Run([9, 10, 11])
    b.finished(None)  # failed: no measure
    assert b.sizer is not None
    assert len(b.sizer.batched) == 1


def test_a_wait_or_no_adapt_keeps_batching():
    for b in (Batcher(max_size=4, max_wait=0.001, adapt=True), Batcher(max_size=4)):
        assert b.sizer is None
        for i in range(8):
            b.add(i, now=0.0)
        assert b.poll(1.0) == Run([0, 1, 2, 3])
        b.finished(0.4)
        assert b.poll(1.0) == Run([4, 5, 6, 7])


def test_the_decision_in_words():
    assert adaptive_batching(None, []) is None
    assert adaptive_batching(Batching(1), [1.0]) is None
    assert adaptive_batching(Batching(16, 5.0), [1.0]) == "fixed: max_batch_wait_ms=5 asks for batches"
    assert adaptive_batching(Batching(16), [None]).startswith("measuring")
    assert describe([0.21, 0.19]) == "batches pay: 0.19x-0.21x per item"
    assert describe([1.02, None]) == "batches do not pay (1.02x per item): one call at a time"


def test_a_sizer_needs_room_to_batch():
    with pytest.raises(ValueError, match="max_size"):
        BatchSizer(max_size=1)
