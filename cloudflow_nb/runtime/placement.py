"""Where a stage's replicas live, as pure functions (no Dask, no I/O): every placement rule, once.

The controller (deploy, reconcile, ``dep.scale``) and the autoscaling policy both ask here:

- which workers a stage may use (:func:`eligible_workers`): GPU stages only GPU-tagged ones,
  other stages untagged ones first, any worker when the cluster has no untagged one;
- how many replicas a stage wants (:func:`target_replicas`) and may have (:func:`most_replicas`);
- which stages need their replicas on distinct workers (:func:`needs_distinct_workers`):
  competitive stages of plain sync code (racers must not share a worker: they would share its
  GIL) and locality stages (one per worker, so the key's holder serves it); racers of a
  concurrent stage (async or ``releases_gil``) may share a worker, spread as evenly as it goes;
- where new replicas go (:func:`place_replicas`, :func:`new_placements`): distinct workers first,
  then the least loaded, never past a worker's capacity (:func:`worker_capacity`), and workers in
  ``avoid`` only when nothing else fits;
- which replicas go when a stage shrinks (:func:`replicas_to_remove`): the least busy, from the
  most loaded workers.

Stages are anything with a stage's placement attributes (:class:`PlacedStage`: a physical
``Stage``, or the autoscaler's ``StageLoad``); workers anything with ``address`` and ``gpu``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from cloudflow_nb.errors import DeploymentError
from cloudflow_nb.physical import Stage

__all__ = [
    "PlacedStage",
    "PlacedWorker",
    "WorkerInfo",
    "eligible_workers",
    "most_replicas",
    "needs_distinct_workers",
    "new_placements",
    "place_replicas",
    "replicas_to_remove",
    "target_replicas",
    "worker_capacity",
]


class PlacedStage(Protocol):
    """What placement reads of a stage."""

    @property
    def name(self) -> str: ...
    @property
    def gpu(self) -> bool: ...
    @property
    def competitive(self) -> bool: ...
    @property
    def concurrent(self) -> bool: ...
    @property
    def locality(self) -> str | None: ...


class PlacedWorker(Protocol):
    """What placement reads of a worker."""

    @property
    def address(self) -> str: ...
    @property
    def gpu(self) -> bool: ...


class _Replica(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def worker(self) -> str: ...


R = TypeVar("R", bound=_Replica)


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as placement sees it."""

    address: str
    gpu: bool = False


def eligible_workers(stage: PlacedStage, workers: Sequence[PlacedWorker], strict: bool = True) -> list[str]:
    """Workers a stage may run on, sorted: GPU-tagged ones for GPU stages, else untagged ones
    (any worker when none is untagged).

    A GPU stage with no GPU-tagged worker raises ``DeploymentError`` (saying how to get one), or
    gets no worker when not ``strict``.
    """
    if stage.gpu:
        gpu = [w.address for w in workers if w.gpu]
        if not gpu and strict:
            raise DeploymentError(
                f"stage {stage.name!r} needs a GPU but no worker is GPU-tagged "
                f"({len(workers)} workers, none with resources={{'GPU': 1}}); "
                "start GPU workers (cf.LocalCluster(gpu_workers=1) or dask worker --resources GPU=1) "
                "or optimize with cf.Optimize(gpu=False)"
            )
        return sorted(gpu)
    cpu = [w.address for w in workers if not w.gpu]
    return sorted(cpu or [w.address for w in workers])


def needs_distinct_workers(stage: PlacedStage) -> bool:
    """Whether no two replicas of the stage may share a worker: competitive stages of plain sync
    code (their racers must not share a GIL) and locality stages (one replica per key holder)."""
    return (stage.competitive and not stage.concurrent) or stage.locality is not None


def target_replicas(stage: Stage, eligible: int) -> int:
    """The replicas a stage's plan needs with ``eligible`` suitable workers (its floor): one per
    eligible worker for locality stages, at most one per eligible worker for competitive ones of
    plain sync code (a concurrent stage's racers share workers)."""
    if stage.locality is not None:
        return max(stage.replicas, eligible)
    if stage.competitive and not stage.concurrent:
        return min(stage.replicas, eligible)
    return stage.replicas


def most_replicas(stage: PlacedStage, eligible: int, limit: int) -> int:
    """The most replicas a stage may grow to under ``limit``: one per eligible worker at most
    when it needs distinct workers."""
    return min(limit, eligible) if needs_distinct_workers(stage) else limit


def worker_capacity(nthreads: int, replicas_per_worker: int) -> int:
    """Replicas (of any stage) a worker hosts before it counts as full: so many per thread."""
    return replicas_per_worker * max(1, nthreads)


def place_replicas(
    stage: PlacedStage,
    workers: Sequence[PlacedWorker],
    hosting: Sequence[str],
    load: Mapping[str, int],
    count: int,
    capacity: Mapping[str, int] | None = None,
    avoid: Collection[str] = (),
) -> list[str]:
    """Workers for up to ``count`` new replicas of ``stage``, one entry per replica.

    ``hosting`` lists the workers of the stage's live replicas; ``load`` counts replicas per
    worker (of every stage). Each pick is an eligible worker not in ``avoid`` when one fits, then
    the one hosting the fewest of this stage's replicas, then the least loaded (ties by address).
    Workers at their ``capacity`` (replicas in ``load``; absent: no limit) are skipped, and so are
    workers already hosting the stage when it needs distinct workers: the answer is then shorter
    than ``count``. A GPU stage without GPU-tagged workers gets none.
    """
    eligible = eligible_workers(stage, workers, strict=False)
    distinct = needs_distinct_workers(stage)
    used = dict.fromkeys(eligible, 0)
    for w in hosting:
        if w in used:
            used[w] += 1
    counts = {w: load.get(w, 0) for w in eligible}
    limits = capacity or {}
    chosen: list[str] = []
    for _ in range(count):
        options = [w for w in eligible if not (distinct and used[w]) and (w not in limits or counts[w] < limits[w])]
        if not options:
            break
        best = min(options, key=lambda w: (w in avoid, used[w], counts[w], w))
        chosen.append(best)
        used[best] += 1
        counts[best] += 1
    return chosen


def new_placements(
    stage: Stage,
    workers: Sequence[PlacedWorker],
    hosting: Sequence[str],
    load: Mapping[str, int],
    avoid: Collection[str] = (),
) -> list[str]:
    """Workers to start new replicas on, so that the stage reaches its :func:`target_replicas`
    (see :func:`place_replicas`). Raises ``DeploymentError`` for a GPU stage without GPU workers.
    """
    eligible = eligible_workers(stage, workers)
    missing = target_replicas(stage, len(eligible)) - len(hosting)
    return place_replicas(stage, workers, hosting, load, missing, avoid=avoid)


def replicas_to_remove(
    replicas: Sequence[R], inflight: Mapping[R, int], load: Mapping[str, int], count: int
) -> list[R]:
    """The ``count`` replicas to take away when a stage shrinks: the least busy first, then those
    on the most loaded worker (``load``: replicas per worker), then the last by id."""
    left = list(replicas)
    counts = dict(load)
    chosen: list[R] = []
    for _ in range(min(count, len(left))):
        victim = max(left, key=lambda r: (-inflight.get(r, 0), counts.get(r.worker, 0), r.id))
        left.remove(victim)
        counts[victim.worker] = counts.get(victim.worker, 0) - 1
        chosen.append(victim)
    return chosen
