"""Latency and batch-size figures a deployment keeps per stage and per request."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, deque
from typing import Any

__all__ = ["LATENCY_BUCKETS", "Recorder", "percentile"]

WINDOW = 10_000
# Upper bounds (seconds) of the latency histogram's buckets; a last bucket holds the slower calls.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; ``None`` when empty.

    Examples
    --------
    >>> percentile([3.0, 1.0, 2.0], 50)
    2.0
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


class Recorder:
    """Counts, errors (by kind), retries, admission rejections, calls skipped (all inputs empty), the
    last ``WINDOW`` latencies, a latency histogram of every call since the start, and the batch sizes
    seen."""

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.retries = 0
        self.rejected = 0  # refused at admission (OverloadError)
        self.skipped = 0  # answered without a call: every input was empty
        self.latencies: deque[float] = deque(maxlen=WINDOW)
        self.batched_calls: Counter[int] = Counter()
        self.error_kinds: Counter[str] = Counter()
        self.histogram = [0] * (len(LATENCY_BUCKETS) + 1)
        self.seconds = 0.0

    def record(self, seconds: float, ok: bool = True, batch: int | None = None, kind: str | None = None) -> None:
        """One finished call: its latency, whether it succeeded (``kind``: the error's class name)
        and the batch it ran in."""
        self.count += 1
        self.latencies.append(seconds)
        self.histogram[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.seconds += seconds
        if not ok:
            self.errors += 1
            self.error_kinds[kind or "FlowError"] += 1
        if batch:
            self.batched_calls[batch] += 1

    def summary(self) -> dict[str, Any]:
        """Plain figures: count, errors and ``error_kinds`` (class name -> how many), retries,
        rejected, skipped (answered without a call: every input was empty), p50/p99
        in ms, ``histogram`` (calls per bucket of ``LATENCY_BUCKETS``, then the slower ones, and the
        sum of seconds), and batches (size -> how many)."""
        lat = list(self.latencies)
        out: dict[str, Any] = {
            "count": self.count,
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "retries": self.retries,
            "rejected": self.rejected,
            "skipped": self.skipped,
            "p50_ms": _ms(percentile(lat, 50)),
            "p99_ms": _ms(percentile(lat, 99)),
            "histogram": {"counts": list(self.histogram), "sum_s": self.seconds},
        }
        if self.batched_calls:  # every call of a batch of n reports n: n calls make one batch
            batches = {size: -(-calls // size) for size, calls in sorted(self.batched_calls.items())}
            out["batches"] = batches
            out["mean_batch"] = round(sum(self.batched_calls.values()) / sum(batches.values()), 2)
            out["max_batch"] = max(batches)
        return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
