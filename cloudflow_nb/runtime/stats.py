"""Latency and batch-size figures a deployment keeps per stage and per request."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

__all__ = ["Recorder", "percentile"]

WINDOW = 10_000


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
    """Counts, errors, retries, admission rejections, the last ``WINDOW`` latencies and the batch sizes seen."""

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.retries = 0
        self.rejected = 0  # refused at admission (OverloadError)
        self.latencies: deque[float] = deque(maxlen=WINDOW)
        self.batched_calls: Counter[int] = Counter()

    def record(self, seconds: float, ok: bool = True, batch: int | None = None) -> None:
        """One finished call: its latency, whether it succeeded and the batch it ran in."""
        self.count += 1
        self.errors += not ok
        self.latencies.append(seconds)
        if batch:
            self.batched_calls[batch] += 1

    def summary(self) -> dict[str, Any]:
        """Plain figures: count, errors, retries, p50/p99 in ms, and batches (size -> how many)."""
        lat = list(self.latencies)
        out: dict[str, Any] = {
            "count": self.count,
            "errors": self.errors,
            "retries": self.retries,
            "rejected": self.rejected,
            "p50_ms": _ms(percentile(lat, 50)),
            "p99_ms": _ms(percentile(lat, 99)),
        }
        if self.batched_calls:  # every call of a batch of n reports n: n calls make one batch
            batches = {size: -(-calls // size) for size, calls in sorted(self.batched_calls.items())}
            out["batches"] = batches
            out["mean_batch"] = round(sum(self.batched_calls.values()) / sum(batches.values()), 2)
            out["max_batch"] = max(batches)
        return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
