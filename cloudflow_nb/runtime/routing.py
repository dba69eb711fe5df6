"""Placement and routing decisions as pure functions (no Dask, no I/O).

Placement decides which workers should host a stage's replicas; routing picks the replica (or,
for a competitive stage, the replicas) that serve one call. The deployment does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cloudflow_nb.errors import DeploymentError
from cloudflow_nb.physical import Stage

__all__ = [
    "LOCALITY_MAX_INFLIGHT",
    "ReplicaRef",
    "WorkerInfo",
    "choose_racers",
    "choose_replica",
    "eligible_workers",
    "new_placements",
]

# A replica with this many calls in flight is overloaded: locality routing then goes elsewhere.
LOCALITY_MAX_INFLIGHT = 8


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as placement sees it."""

    address: str
    gpu: bool = False


@dataclass(frozen=True)
class ReplicaRef:
    """One warm replica of a stage: its id on its worker."""

    stage: str
    id: str
    worker: str


def eligible_workers(stage: Stage, workers: Sequence[WorkerInfo]) -> list[str]:
    """Workers a stage may run on: GPU-tagged ones for GPU stages, else untagged ones first.

    Raises ``DeploymentError`` when a GPU stage finds no GPU-tagged worker.
    """
    if stage.gpu:
        gpu = [w.address for w in workers if w.gpu]
        if not gpu:
            raise DeploymentError(
                f"stage {stage.name!r} needs a GPU but no worker is GPU-tagged "
                f"({len(workers)} workers, none with resources={{'GPU': 1}}); "
                "start GPU workers (cf.LocalCluster(gpu_workers=1) or dask worker --resources GPU=1) "
                "or optimize with cf.Optimize(gpu=False)"
            )
        return sorted(gpu)
    cpu = [w.address for w in workers if not w.gpu]
    return sorted(cpu or [w.address for w in workers])


def target_replicas(stage: Stage, eligible: int) -> int:
    """How many replicas a stage wants: one per eligible worker for locality stages."""
    if stage.locality is not None:
        return max(stage.replicas, eligible)
    if stage.competitive:
        return min(stage.replicas, eligible)
    return stage.replicas


def new_placements(
    stage: Stage, workers: Sequence[WorkerInfo], hosting: Sequence[str], load: Mapping[str, int]
) -> list[str]:
    """Workers to start new replicas on, so that the stage reaches its target.

    ``hosting`` lists the workers of the stage's live replicas; ``load`` counts replicas per
    worker over the whole deployment. Distinct workers come first (competitive and locality
    stages only ever use distinct ones), least loaded first.
    """
    eligible = eligible_workers(stage, workers)
    missing = target_replicas(stage, len(eligible)) - len(hosting)
    counts = {w: load.get(w, 0) for w in eligible}
    used = {w: hosting.count(w) for w in eligible}
    chosen: list[str] = []
    distinct_only = stage.competitive or stage.locality is not None
    while missing > 0:
        options = [w for w in eligible if not (distinct_only and used[w])]
        if not options:
            break
        best = min(options, key=lambda w: (used[w], counts[w], w))
        chosen.append(best)
        used[best] += 1
        counts[best] += 1
        missing -= 1
    return chosen


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
    replicas: Sequence[ReplicaRef], inflight: Mapping[ReplicaRef, int], k: int, exclude: Iterable[ReplicaRef] = ()
) -> list[ReplicaRef]:
    """Up to ``k`` replicas on distinct workers, least busy first.

    While any replica is idle, only idle ones race: a call queued behind a replica that is still
    busy (say, with the losing call of the last race) could only start late and then hold that
    replica for the next request.
    """
    skip = set(exclude)
    candidates = [r for r in replicas if r not in skip]
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
