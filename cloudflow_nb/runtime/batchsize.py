"""Adaptive batch size: batch only when a batch is cheaper per item than one call at a time.

A batch pays on a GPU (one kernel for many inputs) or when a call has a large fixed cost (the
translation example starts one process per batch); on a CPU a batch of k images costs about k
times one image, and every request of the batch waits for the whole batch. The optimizer cannot
tell at plan time (a GPU-tagged worker may have no GPU), so each replica measures.

:class:`BatchSizer` keeps the per-item costs (seconds per item) of the last ``WINDOW`` single
calls and of the last ``WINDOW`` batches, and compares their medians. It takes full batches until
``MIN_BATCHES`` batches have been timed, and then while batches cost less than ``1 - MARGIN`` of
a single call per item; otherwise it takes one item at a time, first come first served. Medians
of several timings, not the last few: where batches form only now and then, they form when the
machine is busiest, and one such batch must not turn batching off (and while batches are rare,
batching costs nothing). Every ``PROBE_EVERY`` batches it probes the other choice once (a size-1
call while batching, a full batch while not), so a change in cost is noticed after a few probes.
The first batch a replica runs is not counted: first calls pay lazy set-up (a model's first
inference). Sans-I/O: durations come in, sizes go out.
A user's ``max_batch_wait_ms > 0`` asks for batches, so :class:`~.batcher.Batcher` adapts only
when the wait is 0.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from statistics import median
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloudflow_nb.physical import Batching

__all__ = [
    "MARGIN",
    "MIN_BATCHES",
    "PROBE_EVERY",
    "WINDOW",
    "BatchSizer",
    "adaptive_batching",
    "adapts",
    "describe",
]

MARGIN = 0.15  # batches must be this much cheaper per item than single calls to be taken
PROBE_EVERY = 20  # batches between probes of the choice not taken
WINDOW = 8  # timings kept per kind (single calls, batches); their medians are compared
MIN_BATCHES = 5  # batches timed before the sizer may decide that batches do not pay


def adapts(max_size: int, max_wait: float) -> bool:
    """Whether a batch size adapts: batches allowed, and no wait asked for (a wait means "batch")."""
    return max_size > 1 and max_wait <= 0


class BatchSizer:
    """Chooses each batch's size from measured per-item costs of single calls and of batches.

    Examples
    --------
    >>> s = BatchSizer(max_size=8)
    >>> s.size()  # nothing measured: take a batch, as the plan asked
    8
    >>> s.finished(8, 3.0); s.size()  # the first batch warms up: not counted
    8
    >>> s.finished(8, 0.8); s.size()  # 0.1 s per item in a batch; now measure one call
    1
    >>> s.finished(1, 0.1); s.size(), s.ratio  # as cheap alone, but one batch does not decide
    (8, None)
    >>> for _ in range(MIN_BATCHES - 1):
    ...     s.finished(8, 0.8)
    >>> s.size(), s.ratio  # five batches no cheaper per item: one at a time
    (1, 1.0)
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 2:
            raise ValueError(f"an adaptive batch size needs max_size of at least 2, got {max_size!r}")
        self.max_size = max_size
        self.single: deque[float] = deque(maxlen=WINDOW)  # seconds per item, size-1 calls
        self.batched: deque[float] = deque(maxlen=WINDOW)  # seconds per item, batches of 2 or more
        self._since_probe = 0  # batches run since the choice not taken was last measured
        self._warm = False  # the first batch has run

    @property
    def ratio(self) -> float | None:
        """A batch's median per-item cost as a fraction of a single call's; ``None`` until a single
        call and :data:`MIN_BATCHES` batches are timed."""
        if not self.single or len(self.batched) < MIN_BATCHES:
            return None
        single = median(self.single)
        return median(self.batched) / single if single > 0 else None

    @property
    def pays(self) -> bool:
        """Whether full batches are the choice (also while either cost is unknown)."""
        ratio = self.ratio
        return ratio is None or ratio < 1 - MARGIN

    def size(self) -> int:
        """The most items the next batch may take."""
        if not self.batched:
            return self.max_size
        if not self.single:
            return 1
        probe = self._since_probe >= PROBE_EVERY - 1
        return self.max_size if self.pays != probe else 1

    def finished(self, size: int, seconds: float) -> None:
        """A batch of ``size`` items took ``seconds``."""
        if size < 1 or seconds < 0:
            return
        if not self._warm:
            self._warm = True
            return
        batching = self.pays
        (self.single if size == 1 else self.batched).append(seconds / size)
        probed = (size == 1) if batching else (size > 1)
        self._since_probe = 0 if probed else self._since_probe + 1


def describe(ratios: Iterable[float | None]) -> str:
    """The decision in words, from each replica's :attr:`BatchSizer.ratio`.

    Examples
    --------
    >>> describe([0.2])
    'batches pay: 0.2x per item'
    >>> describe([1.02])
    'batches do not pay (1.02x per item): one call at a time'
    >>> describe([0.2, 1.0])
    'batches pay on 1 of 2 replicas (0.2x-1x per item)'
    """
    known = sorted(r for r in ratios if r is not None)
    if not known:
        return f"measuring: batches until {MIN_BATCHES} batches and a single call have run"
    paying = sum(r < 1 - MARGIN for r in known)
    span = f"{known[0]:.3g}x" if known[0] == known[-1] else f"{known[0]:.3g}x-{known[-1]:.3g}x"
    if paying == len(known):
        return f"batches pay: {span} per item"
    if paying == 0:
        return f"batches do not pay ({span} per item): one call at a time"
    return f"batches pay on {paying} of {len(known)} replicas ({span} per item)"


def adaptive_batching(batching: Batching | None, ratios: Iterable[float | None]) -> str | None:
    """What ``dep.stats()`` says of a stage's batch size: ``None`` when it does not batch, else
    the fixed policy the user asked for or :func:`describe` of its replicas' measures."""
    if batching is None or batching.max_batch_size < 2:
        return None
    if not adapts(batching.max_batch_size, batching.max_batch_wait_ms):
        return f"fixed: max_batch_wait_ms={batching.max_batch_wait_ms:g} asks for batches"
    return describe(ratios)
