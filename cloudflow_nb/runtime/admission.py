"""Admission control as pure functions: which replicas have room, and when to come back.

Every replica takes at most ``limit`` calls at once (running or queued behind the running one).
The router sends a call only to a replica with room; other calls wait in the stage's bounded
queue. A request is refused at once, with an :class:`~cloudflow_nb.errors.OverloadError`, when
that queue is full or when the stage could not reach it before its deadline: by Little's law the
stage frees one of its ``replicas * limit`` slots every ``latency / (replicas * limit)`` seconds,
so the n-th call in the queue waits about ``n`` times that. Under overload a stage so keeps working
at its capacity on requests that can still meet their deadlines, instead of queueing everything
until it expires. The worker checks the limit again (several routers may share a replica) and
never starts a call that cannot finish before its deadline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TypeVar

from cloudflow_nb.physical import Stage

__all__ = [
    "CONCURRENT_LIMIT",
    "DEFAULT_LIMIT",
    "Ewma",
    "default_limit",
    "expected_wait",
    "in_time",
    "retry_after",
    "with_room",
]

R = TypeVar("R")

# Calls a replica of an unbatched stage holds at once: one running, the rest queued behind it.
DEFAULT_LIMIT = 4
# Calls a replica of a concurrent stage (async, or releases_gil) runs at once.
CONCURRENT_LIMIT = 32

# Share of a request's time left that its expected wait and run may fill: the estimate runs on a
# moving average, and a call admitted right at its deadline times out on the first slow neighbour.
HEADROOM = 0.8


def default_limit(stage: Stage) -> int:
    """Calls one replica of ``stage`` may hold at once: two full batches for batching stages
    (one running, one forming), :data:`CONCURRENT_LIMIT` for concurrent ones (async or
    ``releases_gil``: all of them run at once), else :data:`DEFAULT_LIMIT`.

    Examples
    --------
    >>> import cloudflow_nb as cf
    >>> flow = cf.Flow("f", x=int).map(lambda r: r["x"], names=["y"], batching=True)
    >>> default_limit(flow.optimize(cf.Optimize(max_batch_size=8)).stages[0])
    16
    """
    if stage.batching is not None:
        return max(DEFAULT_LIMIT, 2 * stage.batching.max_batch_size)
    return CONCURRENT_LIMIT if stage.concurrent else DEFAULT_LIMIT


def with_room(replicas: Iterable[R], inflight: Mapping[R, int], limit: int) -> list[R]:
    """The replicas holding fewer than ``limit`` calls, in their given order.

    Examples
    --------
    >>> with_room(["a", "b"], {"a": 4, "b": 1}, limit=4)
    ['b']
    """
    return [r for r in replicas if inflight.get(r, 0) < limit]


def expected_wait(position: int, latency: float, slots: int) -> float:
    """Seconds the call at ``position`` (0: the head) of a stage's queue waits for a slot, when
    calls take ``latency`` seconds and the stage has ``slots`` (replicas x limit) of them.

    Examples
    --------
    >>> expected_wait(0, latency=0.2, slots=4)  # one 50 ms stage replica holding 4 calls
    0.05
    >>> expected_wait(99, latency=0.2, slots=4)
    5.0
    """
    return (position + 1) * latency / max(1, slots)


def in_time(wait: float, latency: float, remaining: float) -> bool:
    """Whether a call that waits ``wait`` seconds, then takes ``latency``, ends well within the
    ``remaining`` seconds of its request (inside :data:`HEADROOM` of them).

    Examples
    --------
    >>> in_time(3.0, latency=0.4, remaining=5.0)
    True
    >>> in_time(4.4, latency=0.4, remaining=5.0)  # would end at 4.8 s of 5: too close to call
    False
    """
    return wait + latency <= remaining * HEADROOM


def retry_after(queued: int, latency: float, slots: int) -> float:
    """Seconds after which a refused request is likely to be admitted: the time the stage needs to
    work off its queue (at least 1 s, rounded up to whole seconds as HTTP's ``Retry-After`` wants).

    Examples
    --------
    >>> retry_after(100, latency=0.2, slots=4)
    6.0
    >>> retry_after(0, latency=0.0, slots=4)
    1.0
    """
    return float(max(1, math.ceil(expected_wait(queued, latency, slots) - 1e-9)))


class Ewma:
    """An exponentially weighted moving average of durations (0 until the first one).

    Examples
    --------
    >>> e = Ewma(weight=0.5)
    >>> e.add(1.0); e.add(3.0); e.value
    2.0
    """

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self.value = 0.0

    def add(self, seconds: float) -> None:
        """One more duration."""
        self.value = seconds if not self.value else self.value + self.weight * (seconds - self.value)
