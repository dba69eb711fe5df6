"""Hedged requests as a sans-I/O policy: when a stage's call is slow enough to send a second copy.

A hedged stage sends each call to one replica. When it has not answered after the stage's
threshold, the router sends a second copy to another replica and takes whichever answers first
("The Tail at Scale", Dean and Barroso, 2013). The threshold is either fixed (milliseconds) or a
percentile of the stage's own recent call latencies (``"p90"``): then about one call in ten is
hedged, and only those that were slow anyway, so the stage gets most of racing's tail for a small
fraction of its cost.

:class:`HedgePolicy` keeps the recent latencies and the counts; it never sleeps nor sends: the
router asks :meth:`HedgePolicy.delay` before a call, and reports what happened.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from cloudflow_nb.runtime.stats import percentile

__all__ = ["MIN_SAMPLES", "WINDOW", "HedgePolicy"]

WINDOW = 500  # recent latencies a percentile threshold is read from
MIN_SAMPLES = 20  # a percentile threshold hedges nothing until it has seen this many calls


class HedgePolicy:
    """When a stage hedges, and how often it did.

    Parameters
    ----------
    after : str or float
        ``"pNN"``: the NN-th percentile of the last :data:`WINDOW` call latencies; a number: that
        many milliseconds.

    Examples
    --------
    >>> policy = HedgePolicy("p90")
    >>> policy.delay() is None  # no latencies seen yet: no hedging
    True
    >>> for ms in range(1, 101):
    ...     policy.observe(ms / 1000)
    >>> policy.delay()
    0.09
    >>> HedgePolicy(25.0).delay()
    0.025
    """

    def __init__(self, after: str | float) -> None:
        self.after = after
        self.latencies: deque[float] = deque(maxlen=WINDOW)
        self.sent = 0  # second copies sent
        self.won = 0  # second copies that answered first
        self._threshold: float | None = None if isinstance(after, str) else float(after) / 1000
        self._stale = True

    def observe(self, seconds: float) -> None:
        """A call answered ``seconds`` after it was sent (the first copy's latency, or for a call
        whose hedge won, the time until the hedge answered: a lower bound of the first's)."""
        self.latencies.append(seconds)
        self._stale = True

    def delay(self) -> float | None:
        """Seconds to wait for the first copy before sending a second; ``None``: never hedge (a
        percentile threshold with fewer than :data:`MIN_SAMPLES` latencies seen)."""
        if isinstance(self.after, str) and self._stale:
            self._stale = False
            recent = list(self.latencies)
            if len(recent) >= MIN_SAMPLES:
                self._threshold = percentile(recent, float(self.after[1:]))
        return self._threshold

    def hedged(self) -> None:
        """A second copy was sent."""
        self.sent += 1

    def answered(self, by_hedge: bool) -> None:
        """A hedged call answered, by its second copy (``by_hedge``) or its first."""
        self.won += by_hedge

    def summary(self) -> dict[str, Any]:
        """``after`` (as configured), the current threshold in ms, and hedges sent and won."""
        threshold = self.delay()
        return {
            "after": self.after,
            "threshold_ms": None if threshold is None else round(threshold * 1000, 3),
            "sent": self.sent,
            "won": self.won,
        }
