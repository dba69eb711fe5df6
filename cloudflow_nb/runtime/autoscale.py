"""Load-driven autoscaling of a deployment, as a pure state machine (no Dask, no clock, no I/O).

Every ``interval`` the deployment's controller hands :meth:`AutoscalePolicy.step` the load it sees
(per stage: its replicas and the calls in flight on each; per worker: its kind, threads and the
replicas it hosts) and the time; the policy answers with instructions (:class:`AddReplica`,
:class:`RemoveReplica`, :class:`AddWorker`, :class:`RemoveWorker`) that the controller applies,
reporting each outcome back through :meth:`AutoscalePolicy.finished`.

The rules, after the paper's replica policy (scale on load against capacity) and the measured Dask
facts (research/dask.md 2.8 and 3.5):

- a stage is saturated when its mean in-flight calls per replica reach ``target_inflight`` on
  ``up_after`` ticks in a row; it then grows to ``ceil(inflight / target_inflight)`` replicas
  (at most ``max_replicas``; at most one per suitable worker for a locality stage or a
  competitive one of plain sync code), placed on the least loaded suitable worker with room (GPU
  stages on GPU-tagged workers only; those stages never twice on one worker);
- a worker has room for ``replicas_per_worker`` replicas per thread; when no suitable worker has
  room the policy asks for one more worker of the right kind (one request at a time per kind, at
  most ``max_workers`` added);
- a stage with no call for ``scale_down_after`` seconds loses one replica (its least busy, from
  the most loaded worker), then another after the same time again (slowly: replicas hold warm
  models), never below its floor;
- a worker the autoscaler added is given back once it has hosted no replica (of any deployment)
  for ``worker_idle_after`` seconds.

Every placement rule (suitable workers, distinct workers, capacity, which replica goes) is
:mod:`~cloudflow_nb.runtime.placement`'s, shared with the controller.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cloudflow_nb.runtime.placement import (
    eligible_workers,
    most_replicas,
    place_replicas,
    replicas_to_remove,
    worker_capacity,
)

__all__ = [
    "AddReplica",
    "AddWorker",
    "Autoscale",
    "AutoscalePolicy",
    "Instruction",
    "RemoveReplica",
    "RemoveWorker",
    "ReplicaLoad",
    "StageLoad",
    "WorkerLoad",
]

DECISIONS = 20


@dataclass(frozen=True)
class Autoscale:
    """Options of a deployment's autoscaler (``dep.autoscale(...)`` takes the same keywords).

    Parameters
    ----------
    min_replicas : int
        Fewest replicas per stage (a stage's plan may ask for more: its floor is the larger).
    max_replicas : int
        Most replicas per stage.
    target_inflight : float
        Calls in flight per replica at which a stage counts as saturated.
    interval : float
        Seconds between two looks at the load.
    scale_down_after : float
        Seconds a stage must be idle before it loses a replica (and between two removals).
    up_after : int
        Saturated looks in a row before a stage grows.
    replicas_per_worker : int
        Replicas a worker hosts per thread before it counts as full.
    max_workers : int
        Most workers the autoscaler adds to the cluster (0: never add workers).
    worker_idle_after : float
        Seconds an added worker must host no replica before it is given back.
    """

    min_replicas: int = 1
    max_replicas: int = 4
    target_inflight: float = 2.0
    interval: float = 0.5
    scale_down_after: float = 30.0
    up_after: int = 2
    replicas_per_worker: int = 2
    max_workers: int = 2
    worker_idle_after: float = 60.0

    def __post_init__(self) -> None:
        problems = []
        if self.min_replicas < 1:
            problems.append(f"min_replicas must be at least 1, got {self.min_replicas!r}")
        if self.max_replicas < self.min_replicas:
            problems.append(f"max_replicas ({self.max_replicas!r}) is below min_replicas ({self.min_replicas!r})")
        if self.target_inflight <= 0:
            problems.append(f"target_inflight must be positive, got {self.target_inflight!r}")
        if self.interval <= 0:
            problems.append(f"interval must be positive, got {self.interval!r}")
        if self.scale_down_after < 0 or self.worker_idle_after < 0:
            problems.append("scale_down_after and worker_idle_after must not be negative")
        if self.up_after < 1 or self.replicas_per_worker < 1 or self.max_workers < 0:
            problems.append("up_after and replicas_per_worker must be at least 1, max_workers at least 0")
        if problems:
            raise ValueError("Autoscale: " + "; ".join(problems))


@dataclass(frozen=True)
class ReplicaLoad:
    """One live replica and the calls in flight on it."""

    id: str
    worker: str
    inflight: int = 0


@dataclass(frozen=True)
class StageLoad:
    """A stage as the autoscaler sees it.

    ``calls`` is the stage's cumulative count of answered calls (new calls mean it is busy);
    ``floor`` the replicas its plan needs; ``p50_ms`` a recent latency, only for the reasons;
    ``gpu``, ``competitive``, ``locality`` and ``concurrent`` as on the plan's stage (they decide
    placement).
    """

    name: str
    replicas: tuple[ReplicaLoad, ...] = ()
    calls: int = 0
    floor: int = 1
    gpu: bool = False
    competitive: bool = False
    p50_ms: float | None = None
    locality: str | None = None
    concurrent: bool = False

    @property
    def inflight(self) -> int:
        return sum(r.inflight for r in self.replicas)


@dataclass(frozen=True)
class WorkerLoad:
    """A worker: its kind, threads, the replicas it hosts for this deployment and for others,
    and whether the autoscaler added it (only those are ever given back)."""

    address: str
    gpu: bool = False
    nthreads: int = 1
    hosted: int = 0
    hosted_elsewhere: int = 0
    added: bool = False


@dataclass(frozen=True)
class AddReplica:
    """Start one more warm replica of ``stage`` on ``worker``."""

    stage: str
    worker: str
    reason: str


@dataclass(frozen=True)
class RemoveReplica:
    """Take ``replica`` of ``stage`` out of routing, then stop it."""

    stage: str
    replica: str
    worker: str
    reason: str


@dataclass(frozen=True)
class AddWorker:
    """Ask the cluster for one more worker (GPU-tagged when ``gpu``) for ``stage``."""

    gpu: bool
    stage: str
    reason: str


@dataclass(frozen=True)
class RemoveWorker:
    """Give back a worker the autoscaler added, now hosting nothing."""

    address: str
    reason: str


Instruction = AddReplica | RemoveReplica | AddWorker | RemoveWorker


@dataclass
class _StageState:
    hot: int = 0
    calls: int = 0
    active_at: float | None = None
    pending: int = 0
    target: int = 0


@dataclass
class _Counts:
    workers_added: int = 0
    workers_removed: int = 0
    replicas_added: int = 0
    replicas_removed: int = 0
    failures: int = 0


class AutoscalePolicy:
    """The autoscaler's decisions; feed it load with :meth:`step`, outcomes with :meth:`finished`."""

    WORKER_RETRY = 30.0

    def __init__(self, options: Autoscale | None = None) -> None:
        self.options = options or Autoscale()
        self._stages: dict[str, _StageState] = {}
        self._idle_workers: dict[str, float] = {}
        self._pending_workers: dict[bool, float] = {}
        self._blocked: dict[bool, float] = {}
        self._removing: set[str] = set()
        self.counts = _Counts()
        self.decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS)
        self._last_reason: dict[str, str] = {}
        self._now = 0.0
        self._view: dict[str, dict[str, Any]] = {}

    # -- one look at the load ---------------------------------------------------------------------

    def step(self, now: float, stages: Sequence[StageLoad], workers: Sequence[WorkerLoad]) -> list[Instruction]:
        """The instructions for this look at the load."""
        self._now = now
        opts = self.options
        out: list[Instruction] = []
        hosted = {w.address: w.hosted + w.hosted_elsewhere for w in workers}  # and this round's new ones
        capacity = {w.address: worker_capacity(w.nthreads, opts.replicas_per_worker) for w in workers}
        for stage in stages:
            st = self._stages.setdefault(stage.name, _StageState(calls=stage.calls, active_at=now))
            n = len(stage.replicas)
            floor = max(stage.floor, opts.min_replicas)
            eligible = len(eligible_workers(stage, workers, strict=False))
            ceiling = max(most_replicas(stage, eligible, opts.max_replicas), floor)
            inflight = stage.inflight
            if inflight > 0 or stage.calls != st.calls:
                st.active_at = now
            st.calls = stage.calls
            load = inflight / max(n, 1)
            st.hot = st.hot + 1 if n and load >= opts.target_inflight else 0
            have = n + st.pending
            st.target = max(have, floor)
            self._view[stage.name] = {
                "replicas": n,
                "starting": st.pending,
                "min": floor,
                "max": ceiling,
                "inflight": inflight,
                "load": round(load, 2),
                "p50_ms": stage.p50_ms,
            }
            if st.hot >= opts.up_after and have < ceiling:
                want = min(ceiling, max(have + 1, math.ceil(inflight / opts.target_inflight)))
                st.target = want
                why = f"{inflight} calls in flight on {n} replicas (target {opts.target_inflight:g} per replica"
                why += f", p50 {stage.p50_ms:g} ms)" if stage.p50_ms is not None else ")"
                hosting = [r.worker for r in stage.replicas]
                chosen = place_replicas(stage, workers, hosting, hosted, want - have, capacity)
                for worker in chosen:
                    hosted[worker] = hosted.get(worker, 0) + 1
                    st.pending += 1
                    out.append(AddReplica(stage.name, worker, why))
                    self._decide("add-replica", stage.name, f"on {worker}: {why}")
                if len(chosen) < want - have:
                    out.extend(self._need_worker(stage, workers, now))
                st.hot = 0
            elif (
                n > floor
                and st.pending == 0
                and st.active_at is not None
                and now - st.active_at >= opts.scale_down_after
            ):
                (victim,) = replicas_to_remove(stage.replicas, {r: r.inflight for r in stage.replicas}, hosted, 1)
                why = f"idle for {now - st.active_at:.1f} s ({n} replicas, min {floor})"
                out.append(RemoveReplica(stage.name, victim.id, victim.worker, why))
                self._decide("remove-replica", stage.name, f"{victim.id} on {victim.worker}: {why}")
                st.target = n - 1
                st.active_at = now  # one removal per scale_down_after: scale down slowly
        out.extend(self._idle_worker(now, workers))
        return out

    def _need_worker(self, stage: StageLoad, workers: Sequence[WorkerLoad], now: float) -> list[Instruction]:
        kind = "GPU-tagged" if stage.gpu else "CPU"
        if stage.gpu in self._pending_workers:
            return []
        blocked = self._blocked.get(stage.gpu)
        if blocked is not None and now - blocked < self.WORKER_RETRY:
            return []
        if self.counts.workers_added - self.counts.workers_removed >= self.options.max_workers:
            self._decide("no-room", stage.name, f"no {kind} worker has room and max_workers={self.options.max_workers}")
            return []
        self._pending_workers[stage.gpu] = now
        why = f"no {kind} worker has room for another replica ({self.options.replicas_per_worker} per thread)"
        self._decide("add-worker", stage.name, why)
        return [AddWorker(stage.gpu, stage.name, why)]

    def _idle_worker(self, now: float, workers: Sequence[WorkerLoad]) -> list[Instruction]:
        seen = set()
        out: list[Instruction] = []
        for w in workers:
            seen.add(w.address)
            if not w.added or w.hosted or w.hosted_elsewhere or w.address in self._removing:
                self._idle_workers.pop(w.address, None)
                continue
            since = self._idle_workers.setdefault(w.address, now)
            if not out and now - since >= self.options.worker_idle_after and not self._pending_workers:
                why = f"added worker hosted no replica for {now - since:.1f} s"
                out.append(RemoveWorker(w.address, why))
                self._removing.add(w.address)
                self._decide("remove-worker", None, f"{w.address}: {why}")
        for address in set(self._idle_workers) - seen:
            del self._idle_workers[address]
        self._removing &= seen
        return out

    # -- outcomes ---------------------------------------------------------------------------------

    def finished(self, instruction: Instruction, ok: bool, detail: str = "") -> None:
        """What became of an instruction (``detail``: the error, or the new worker's address)."""
        if isinstance(instruction, AddReplica):
            st = self._stages.get(instruction.stage)
            if st is not None:
                st.pending = max(0, st.pending - 1)
            if ok:
                self.counts.replicas_added += 1
            else:
                self._fail(instruction.stage, f"replica on {instruction.worker} did not start: {detail}")
        elif isinstance(instruction, RemoveReplica):
            if ok:
                self.counts.replicas_removed += 1
            else:
                self._fail(instruction.stage, f"kept {instruction.replica}: {detail}")
        elif isinstance(instruction, AddWorker):
            self._pending_workers.pop(instruction.gpu, None)
            if ok:
                self.counts.workers_added += 1
                self._decide("worker-added", instruction.stage, detail)
            else:
                self._blocked[instruction.gpu] = self._now
                self._fail(instruction.stage, f"could not add a worker: {detail}")
        elif isinstance(instruction, RemoveWorker):
            if ok:
                self.counts.workers_removed += 1
            else:
                self._removing.discard(instruction.address)
                self._fail(None, f"could not remove {instruction.address}: {detail}")

    def _fail(self, stage: str | None, reason: str) -> None:
        self.counts.failures += 1
        self._decide("failed", stage, reason)

    def _decide(self, action: str, stage: str | None, reason: str) -> None:
        key = f"{action}/{stage}"
        if action == "no-room" and self._last_reason.get(key) == reason:
            return  # the same standing condition once, not every tick
        self._last_reason[key] = reason
        self.decisions.append({"t": round(self._now, 3), "action": action, "stage": stage, "reason": reason})

    # -- visibility -------------------------------------------------------------------------------

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """JSON-friendly figures: per stage current and target replicas, counts, last decisions."""
        now = self._now if now is None else now
        stages = {}
        for name, view in self._view.items():
            stages[name] = {**view, "target": self._stages[name].target}
        decisions = [{**d, "ago_s": round(now - d["t"], 3)} for d in self.decisions]
        for d in decisions:
            del d["t"]
        return {
            "enabled": True,
            "options": asdict(self.options),
            "stages": stages,
            **asdict(self.counts),
            "pending_workers": sorted("gpu" if gpu else "cpu" for gpu in self._pending_workers),
            "decisions": decisions,
        }
