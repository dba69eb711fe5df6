"""Adaptive batch size: batch only when a batch is cheaper per item than one call at a time.

A batch pays on a GPU (one kernel for many inputs) or when a call has a large fixed cost (the
translation example starts one process per batch); on a CPU a batch of k images costs about k
times one image, and every request of the batch waits for the whole batch. The optimizer cannot
tell at plan time (a GPU-tagged worker may have no GPU), so each replica measures.

:class:`BatchSizer` keeps two per-item cost estimates (seconds per item, moving averages): one
of single calls and one of batches. While batches cost less than ``1 - MARGIN`` of a single call
per item it takes full batches; otherwise it takes one item at a time, first come first served.
Every ``PROBE_EVERY`` batches it probes the other choice once (a size-1 call while batching, a
full batch while not) so a change in cost is noticed. The first batch a replica runs is not
counted: first calls pay lazy set-up (a model's first inference). Sans-I/O: durations come in, sizes go out.
A user's ``max_batch_wait_ms > 0`` asks for batches, so :class:`~.batcher.Batcher` adapts only
when the wait is 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloudflow_nb.physical import Batching

__all__ = ["MARGIN", "PROBE_EVERY", "BatchSizer", "adaptive_batching", "adapts", "describe"]

MARGIN = 0.15  # batches must be this much cheaper per item than single calls to be taken
PROBE_EVERY = 20  # batches between probes of the choice not taken
ALPHA = 0.4  # weight of one item's cost in an estimate (a batch of k counts as k items)


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
    >>> s.finished(1, 0.1); s.size(), s.ratio  # no cheaper per item: one at a time
    (1, 1.0)
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 2:
            raise ValueError(f"an adaptive batch size needs max_size of at least 2, got {max_size!r}")
        self.max_size = max_size
        self.single: float | None = None  # seconds per item, size-1 calls
        self.batched: float | None = None  # seconds per item, batches of 2 or more
        self._since_probe = 0  # batches run since the choice not taken was last measured
        self._warm = False  # the first batch has run

    @property
    def ratio(self) -> float | None:
        """A batch's per-item cost as a fraction of a single call's; ``None`` until both are measured."""
        if self.single is None or self.batched is None or self.single <= 0:
            return None
        return self.batched / self.single

    @property
    def pays(self) -> bool:
        """Whether full batches are the choice (also while either cost is unknown)."""
        ratio = self.ratio
        return ratio is None or ratio < 1 - MARGIN

    def size(self) -> int:
        """The most items the next batch may take."""
        if self.batched is None:
            return self.max_size
        if self.single is None:
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
        per_item = seconds / size
        weight = 1 - (1 - ALPHA) ** size
        if size == 1:
            self.single = per_item if self.single is None else self.single + weight * (per_item - self.single)
        else:
            self.batched = per_item if self.batched is None else self.batched + weight * (per_item - self.batched)
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
        return "measuring: batches until a batch and a single call have run"
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
