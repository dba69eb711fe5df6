"""A replica's request queue as a sans-I/O state machine: events in, instructions out.

The replica's I/O loop feeds it arrivals and the clock, and asks :meth:`Batcher.poll` what to do:
run a batch now, wait until a moment, or sleep until the next arrival. No Dask, no clock inside,
so every policy decision is tested directly.

Policy: while the replica is idle, a batch runs as soon as ``max_size`` items wait or the oldest
has waited ``max_wait`` seconds; while a batch runs, arrivals queue up and the next poll after
:meth:`Batcher.finished` takes up to ``max_size`` of them. With ``adapt`` and no wait (``max_wait``
0: the user did not ask to hold requests for a batch), a
:class:`~cloudflow_nb.runtime.batchsize.BatchSizer` fed each batch's duration through
:meth:`Batcher.finished` sets that cap: full batches while they are cheaper per item than single
calls, one item at a time while they are not.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloudflow_nb.runtime.batchsize import BatchSizer, adapts

__all__ = ["Batcher", "Run", "Sleep", "WaitUntil"]


@dataclass(frozen=True)
class Run:
    """Run these items as one batch now."""

    items: list[Any]


@dataclass(frozen=True)
class WaitUntil:
    """Nothing to run before ``deadline`` (seconds, the caller's clock) unless more items arrive."""

    deadline: float


@dataclass(frozen=True)
class Sleep:
    """Nothing to do until the next arrival (or until the running batch finishes)."""


class Batcher:
    """Collects items into batches of at most ``max_size``, holding the first for at most ``max_wait``.

    Examples
    --------
    >>> b = Batcher(max_size=2, max_wait=0.01)
    >>> b.add("a", now=0.0); b.poll(now=0.0)
    WaitUntil(deadline=0.01)
    >>> b.add("b", now=0.001); b.poll(now=0.001)
    Run(items=['a', 'b'])
    >>> b.poll(now=0.002)  # busy until finished()
    Sleep()
    """

    def __init__(self, max_size: int = 1, max_wait: float = 0.0, adapt: bool = False) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size!r}")
        self.max_size = max_size
        self.max_wait = max(0.0, max_wait)
        self.sizer = BatchSizer(max_size) if adapt and adapts(max_size, self.max_wait) else None
        self._queue: deque[tuple[float, Any]] = deque()
        self.busy = False
        self._running = 0  # items in the running batch

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, item: Any, now: float) -> None:
        """An item arrived at ``now``."""
        self._queue.append((now, item))

    def poll(self, now: float) -> Run | WaitUntil | Sleep:
        """What to do at ``now``; a ``Run`` marks the batcher busy until :meth:`finished`."""
        if self.busy or not self._queue:
            return Sleep()
        deadline = self._queue[0][0] + self.max_wait
        if len(self._queue) < self.max_size and now < deadline:
            return WaitUntil(deadline)
        cap = self.max_size if self.sizer is None else self.sizer.size()
        count = min(cap, len(self._queue))
        items = [self._queue.popleft()[1] for _ in range(count)]
        self.busy = True
        self._running = count
        return Run(items)

    def finished(self, seconds: float | None = None) -> None:
        """The running batch is done; it took ``seconds`` (``None``: not a measurement, e.g. it failed)."""
        self.busy = False
        if self.sizer is not None and seconds is not None and self._running:
            self.sizer.finished(self._running, seconds)
        self._running = 0

    def drop(self, predicate: Callable[[Any], bool]) -> list[Any]:
        """Remove and return the queued items matching ``predicate`` (cancelled or expired)."""
        kept: deque[tuple[float, Any]] = deque()
        dropped = []
        for arrived, item in self._queue:
            if predicate(item):
                dropped.append(item)
            else:
                kept.append((arrived, item))
        self._queue = kept
        return dropped
