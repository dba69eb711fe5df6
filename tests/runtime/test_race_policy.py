"""The adaptive racing policy with made-up latencies: no Dask, no clock."""

from __future__ import annotations

import itertools

import pytest

from cloudflow_nb.runtime.racepolicy import (
    EARLY,
    MIN_SAMPLES,
    PROBE_RACED,
    PROBE_RACED_MAX,
    PROBE_SINGLE,
    RACE_FIRST,
    WINDOW,
    RacePolicy,
    pays,
)

LEARNING = RACE_FIRST + 2 * MIN_SAMPLES  # calls until both kinds have been timed enough


def _serve(policy: RacePolicy, calls: int, raced: float, single: float) -> list[int]:
    """Run ``calls`` calls whose latency depends only on whether they were raced; their racers."""
    chosen = []
    for _ in range(calls):
        k = policy.racers()
        policy.observe(k, raced if k > 1 else single)
        chosen.append(k)
    return chosen


def test_starts_racing_as_planned_then_alternates_while_learning():
    policy = RacePolicy(3)
    chosen = [policy.racers() for _ in range(RACE_FIRST + 6)]
    assert chosen == [3] * RACE_FIRST + [1, 3] * 3
    assert policy.summary() == f"racing as planned, learning (timed 0 raced and 0 single calls, of {MIN_SAMPLES} each)"


def test_racing_faster_keeps_racing_with_a_single_probe_now_and_then():
    policy = RacePolicy(2)
    _serve(policy, LEARNING, raced=0.030, single=0.050)
    assert policy.racing
    assert policy.summary() == "pays: raced p50 0.60x, p95 0.60x of single"
    chosen = _serve(policy, 10 * PROBE_SINGLE, raced=0.030, single=0.050)
    assert chosen.count(1) == 10
    assert policy.racing


def test_a_clear_cost_ends_learning_early_a_gain_does_not():
    costly, paying = RacePolicy(2), RacePolicy(2)
    _serve(costly, RACE_FIRST + 2 * EARLY, raced=0.160, single=0.100)
    _serve(paying, RACE_FIRST + 2 * EARLY, raced=0.030, single=0.100)
    assert costly.summary().startswith("does not pay (raced p50 1.60x")
    assert paying.summary().startswith("racing as planned, learning")


def test_racing_slower_sends_to_one_replica_and_probes_racing():
    policy = RacePolicy(2)
    _serve(policy, LEARNING, raced=0.160, single=0.100)
    assert not policy.racing
    assert policy.summary() == "does not pay (raced p50 1.60x, p95 1.60x of single): one replica per call, probing"
    chosen = _serve(policy, 1000, raced=0.160, single=0.100)
    # each probe that confirms it halves how often racing is probed: after 10, 20, 40 ... 320 calls
    probes = [i for i, k in enumerate(chosen) if k == 2]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert gaps == sorted(gaps), gaps
    assert gaps[-1] >= 160, gaps
    assert 4 <= len(probes) <= 10
    assert not policy.racing


def test_probes_back_off_to_a_floor_and_a_fast_probe_looks_again_soon():
    policy = RacePolicy(2)
    _serve(policy, LEARNING, raced=0.160, single=0.100)
    _serve(policy, 4000, raced=0.160, single=0.100)
    assert policy.interval == PROBE_RACED_MAX
    policy.observe(2, 0.040)  # a raced probe far faster than single calls
    assert policy.interval == PROBE_RACED


def test_a_change_is_noticed_after_probes():
    policy = RacePolicy(2)
    _serve(policy, LEARNING, raced=0.160, single=0.100)
    assert not policy.racing
    # the contention went away: raced probes are now faster; racing resumes within a window's probes
    chosen = _serve(policy, WINDOW * PROBE_RACED, raced=0.040, single=0.100)
    assert policy.racing
    assert chosen[-PROBE_RACED:] == [2] * PROBE_RACED
    # and stops again once racers contend again: the raced tail shows it within a few calls
    chosen = _serve(policy, WINDOW, raced=0.200, single=0.100)
    assert not policy.racing
    assert chosen.count(2) < WINDOW / 4


def test_a_faster_tail_alone_pays_unless_the_median_is_much_slower():
    policy = RacePolicy(2)
    for ms in (10, 10, 10, 90) * (MIN_SAMPLES // 4):  # single: a slow call in four
        policy.observe(1, ms / 1000)
    for ms in (10, 10, 10, 12) * (MIN_SAMPLES // 4):  # raced: same median, the tail cut
        policy.observe(2, ms / 1000)
    assert policy.summary() == "pays: raced p50 1.00x, p95 0.13x of single"
    assert pays(1.05, 0.5)
    assert not pays(1.3, 0.5)
    assert not pays(0.5, 1.3)  # a median of cheap calls, say, while the long ones got slower
    assert not pays(0.95, 0.95)


def test_failed_or_unraced_calls_keep_it_learning():
    policy = RacePolicy(2)
    for _ in range(3 * WINDOW):
        policy.observe(1, 0.010)  # e.g. one replica left: every call went to one
    assert policy.racing
    assert policy.summary().startswith("racing as planned, learning")


@pytest.mark.parametrize("planned", [2, 3])
def test_racers_is_planned_or_one(planned):
    policy = RacePolicy(planned)
    assert set(_serve(policy, 200, raced=0.05, single=0.02)) == {planned, 1}
