"""The hedging policy without Dask or a clock: thresholds, warm-up and counts."""

from __future__ import annotations

from cloudflow_nb.runtime.hedging import MIN_SAMPLES, WINDOW, HedgePolicy


def test_a_fixed_threshold_hedges_from_the_first_call():
    policy = HedgePolicy(40.0)
    assert policy.delay() == 0.04
    policy.observe(1.0)
    assert policy.delay() == 0.04


def test_a_percentile_waits_for_enough_latencies_then_follows_them():
    policy = HedgePolicy("p90")
    for _ in range(MIN_SAMPLES - 1):
        policy.observe(0.010)
    assert policy.delay() is None
    policy.observe(0.010)
    assert policy.delay() == 0.010
    for _ in range(WINDOW):  # the window forgets the old latencies
        policy.observe(0.050)
    assert policy.delay() == 0.050


def test_the_percentile_ignores_a_rare_stall():
    policy = HedgePolicy("p90")
    for i in range(100):
        policy.observe(0.200 if i % 20 == 0 else 0.010)  # 5% stall
    assert policy.delay() == 0.010
    assert HedgePolicy("p99.5").after == "p99.5"


def test_counts_and_summary():
    policy = HedgePolicy(25.0)
    policy.hedged()
    policy.answered(by_hedge=True)
    policy.hedged()
    policy.answered(by_hedge=False)
    assert policy.summary() == {"after": 25.0, "threshold_ms": 25.0, "sent": 2, "won": 1}
    assert HedgePolicy("p90").summary()["threshold_ms"] is None
