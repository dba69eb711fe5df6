"""Routing decisions as pure functions (no Dask, no I/O).

Routing picks the replica (or, for a competitive stage, the replicas) that serve one call; the
router does the I/O. Where replicas live is :mod:`~cloudflow_nb.runtime.placement`'s business.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "LOCALITY_MAX_INFLIGHT",
    "ReplicaRef",
    "choose_racers",
    "choose_replica",
]

# A replica with this many calls in flight is overloaded: locality routing then goes elsewhere.
LOCALITY_MAX_INFLIGHT = 8


@dataclass(frozen=True)
class ReplicaRef:
    """One warm replica of a stage: its id on its worker."""

    stage: str
    id: str
    worker: str


def choose_replica(
    replicas: Sequence[ReplicaRef],
    inflight: Mapping[ReplicaRef, int],
    turn: int = 0,
    prefer: str | None = None,
    exclude: Iterable[ReplicaRef] = (),
) -> ReplicaRef | None:
    """The replica for one call: on worker ``prefer`` when it has one that is not overloaded,
    else the least busy, ties broken round-robin by ``turn``. ``None`` when none is left."""
    skip = set(exclude)
    candidates = [r for r in replicas if r not in skip]
    if not candidates:
        return None
    if prefer is not None:
        local = [r for r in candidates if r.worker == prefer and inflight.get(r, 0) < LOCALITY_MAX_INFLIGHT]
        if local:
            return min(local, key=lambda r: inflight.get(r, 0))
    n = len(candidates)
    order = {r: (i - turn) % n for i, r in enumerate(candidates)}
    return min(candidates, key=lambda r: (inflight.get(r, 0), order[r]))


def choose_racers(
    replicas: Sequence[ReplicaRef],
    inflight: Mapping[ReplicaRef, int],
    k: int,
    exclude: Iterable[ReplicaRef] = (),
    shared: bool = False,
) -> list[ReplicaRef]:
    """Up to ``k`` replicas, least busy first: on distinct workers, or with ``shared`` (a
    concurrent stage: async or ``releases_gil``) on any workers, spread over them when it can.

    Without ``shared``, while any replica is idle only idle ones race: a call queued behind a
    replica that is still busy (say, with the losing call of the last race) could only start late
    and then hold that replica for the next request. A concurrent replica starts every call it
    has room for at once, so busy ones race too.

    Examples
    --------
    >>> a1, a2, b1 = ReplicaRef("s", "a1", "A"), ReplicaRef("s", "a2", "A"), ReplicaRef("s", "b1", "B")
    >>> [r.id for r in choose_racers([a1, a2, b1], {}, 3)]
    ['a1', 'b1']
    >>> [r.id for r in choose_racers([a1, a2, b1], {a1: 1}, 3, shared=True)]
    ['a2', 'b1', 'a1']
    """
    skip = set(exclude)
    candidates = [r for r in replicas if r not in skip]
    if shared:
        picked: list[ReplicaRef] = []
        per_worker: dict[str, int] = {}
        for _ in range(min(k, len(candidates))):
            best = min(
                (r for r in candidates if r not in picked),
                key=lambda r: (inflight.get(r, 0), per_worker.get(r.worker, 0), r.worker, r.id),
            )
            picked.append(best)
            per_worker[best.worker] = per_worker.get(best.worker, 0) + 1
        return picked
    idle = [r for r in candidates if not inflight.get(r, 0)]
    chosen: list[ReplicaRef] = []
    workers: set[str] = set()
    for r in sorted(idle or candidates, key=lambda r: (inflight.get(r, 0), r.worker)):
        if r.worker not in workers:
            chosen.append(r)
            workers.add(r.worker)
        if len(chosen) == k:
            break
    return chosen
