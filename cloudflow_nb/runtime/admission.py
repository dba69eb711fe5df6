"""Admission control as pure functions: which replicas have room, and when to come back.

Every replica takes at most ``limit`` calls at once (running or queued behind the running one).
The router admits a call only to a replica with room and refuses the request at once, with an
:class:`~cloudflow_nb.errors.OverloadError`, when no replica has any: under overload a stage keeps
working at its capacity on requests that can still meet their deadlines, instead of queueing
everything until it expires. The worker checks the same limit again (several routers may share a
replica), and never starts a call whose deadline has passed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from cloudflow_nb.physical import Stage

__all__ = ["DEFAULT_LIMIT", "default_limit", "retry_after", "with_room"]

R = TypeVar("R")

# Calls a replica of an unbatched stage holds at once: one running, the rest queued behind it.
DEFAULT_LIMIT = 4


def default_limit(stage: Stage) -> int:
    """Calls one replica of ``stage`` may hold at once: two full batches for batching stages
    (one running, one forming), else :data:`DEFAULT_LIMIT`.

    Examples
    --------
    >>> import cloudflow_nb as cf
    >>> flow = cf.Flow("f", x=int).map(lambda r: r["x"], names=["y"], batching=True)
    >>> default_limit(flow.optimize(cf.Optimize(max_batch_size=8)).stages[0])
    16
    """
    if stage.batching is not None:
        return max(DEFAULT_LIMIT, 2 * stage.batching.max_batch_size)
    return DEFAULT_LIMIT


def with_room(replicas: Iterable[R], inflight: Mapping[R, int], limit: int) -> list[R]:
    """The replicas holding fewer than ``limit`` calls, in their given order.

    Examples
    --------
    >>> with_room(["a", "b"], {"a": 4, "b": 1}, limit=4)
    ['b']
    """
    return [r for r in replicas if inflight.get(r, 0) < limit]


def retry_after(latencies: Sequence[float], replicas: int, limit: int) -> float:
    """Seconds after which a refused request is likely to be admitted: the time the stage needs
    to work off one full queue per replica, from its recent median call latency (at least 1 s,
    rounded up to whole seconds as HTTP's ``Retry-After`` wants them).

    Examples
    --------
    >>> retry_after([0.5, 0.5, 0.7], replicas=1, limit=4)
    2.0
    >>> retry_after([], replicas=1, limit=4)
    1.0
    """
    if not latencies:
        return 1.0
    ordered = sorted(latencies)
    median = ordered[len(ordered) // 2]
    return float(max(1, math.ceil(median * limit / max(1, replicas) - 1e-9)))
