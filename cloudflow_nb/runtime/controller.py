"""The control plane of a deployment: keeps every stage's replicas placed on live workers.

It asks the scheduler which workers exist (and which are GPU-tagged), starts replicas where
:func:`~cloudflow_nb.runtime.routing.new_placements` says, and reconciles whenever the router
reports a lost worker or replica, and every :data:`WATCH_INTERVAL` seconds: replicas on vanished
workers are dropped and re-placed when capacity exists.

A health loop probes the workers hosting replicas every :data:`PROBE_INTERVAL` seconds and applies
the decisions of a :class:`~cloudflow_nb.runtime.health.HealthPolicy`: a replica whose call has run
past the stage timeout, or whose worker stopped answering, is drained (out of routing, its queued
calls sent elsewhere) and replaced; it is stopped once idle. Every loop runs under a
:class:`~cloudflow_nb.runtime.supervise.Supervisor`: a failing round is logged and counted in
``dep.stats()``, and the loop goes on.

With autoscaling on (:meth:`Controller.start_autoscale`) it also applies the decisions of an
:class:`~cloudflow_nb.runtime.autoscale.AutoscalePolicy`: new replicas are built (warm) before the
router sees them, surplus idle ones are taken out of routing and then stopped, and workers are
added or given back through a :class:`WorkerScaler`. Every deployment reports the workers hosting
its replicas to the scheduler's :class:`ReplicaGuard`, which vetoes their retirement by Dask's own
adaptive machinery.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol.serialize import to_serialize

from cloudflow_nb.errors import DeploymentError
from cloudflow_nb.runtime.autoscale import (
    AddReplica,
    AddWorker,
    Autoscale,
    AutoscalePolicy,
    Instruction,
    RemoveReplica,
    RemoveWorker,
    ReplicaLoad,
    StageLoad,
    WorkerLoad,
)
from cloudflow_nb.runtime.comm import worker_gone
from cloudflow_nb.runtime.health import Drain, HealthPolicy, ReplicaProbe, Serving
from cloudflow_nb.runtime.replica import StageSpec
from cloudflow_nb.runtime.routing import ReplicaRef, WorkerInfo, eligible_workers, new_placements, target_replicas
from cloudflow_nb.runtime.stats import percentile
from cloudflow_nb.runtime.supervise import Supervisor
from cloudflow_nb.runtime.wire import labelled, unpack_error

if TYPE_CHECKING:
    from distributed.core import ConnectionPool
    from distributed.scheduler import Scheduler, WorkerState

    from cloudflow_nb.runtime.router import StageRuntime

__all__ = ["Controller", "ReplicaGuard", "WorkerScaler", "list_workers"]

WATCH_INTERVAL = 0.5
PROBE_INTERVAL = 1.0  # seconds between health probes of the workers hosting replicas
PROBE_TIMEOUT = 5.0  # a worker that does not answer a probe within this missed it
START_TIMEOUT = 120.0
# How long a replica taken out of routing waits before it is stopped (calls already sent finish).
STOP_GRACE = 1.0
# Latencies a stage's recent p50 is taken over (for the autoscaler's reasons).
RECENT = 200


async def list_workers(pool: ConnectionPool, scheduler: str) -> list[WorkerInfo]:
    """The scheduler's running workers, GPU-tagged or not."""
    info = await pool(scheduler).identity()
    return [
        WorkerInfo(address, bool((w.get("resources") or {}).get("GPU")))
        for address, w in sorted(info["workers"].items())
        if w.get("status", "running") == "running"
    ]


async def worker_threads(pool: ConnectionPool, scheduler: str) -> list[tuple[WorkerInfo, int]]:
    """The scheduler's running workers with their thread counts."""
    info = await pool(scheduler).identity()
    return [
        (WorkerInfo(address, bool((w.get("resources") or {}).get("GPU"))), int(w.get("nthreads") or 1))
        for address, w in sorted(info["workers"].items())
        if w.get("status", "running") == "running"
    ]


class ReplicaGuard(SchedulerPlugin):
    """Scheduler plugin: which workers host stage replicas, and a veto on retiring them.

    Deployments report their hosting workers (``cf_replica_hosts``); ``valid_workers_downscaling``
    then keeps those workers out of what Dask's adaptive scaling and ``retire_workers`` may close
    (research/dask.md 2.8: ``cluster.adapt()`` sees no actor traffic and would retire them).
    """

    name = "cloudflow-replicas"
    idempotent = True

    def __init__(self) -> None:
        self.hosts: dict[str, dict[str, int]] = {}

    async def start(self, scheduler: Scheduler) -> None:
        scheduler.handlers["cf_replica_hosts"] = self.report

    def report(self, deployment: str, workers: dict[str, int] | None = None) -> dict[str, int]:
        """Record ``deployment``'s replicas per worker (``None``: it closed); all deployments' counts."""
        if workers:
            self.hosts[deployment] = dict(workers)
        else:
            self.hosts.pop(deployment, None)
        return self.hosted()

    def hosted(self) -> dict[str, int]:
        """Replicas per worker over every deployment."""
        total: dict[str, int] = {}
        for workers in self.hosts.values():
            for address, n in workers.items():
                total[address] = total.get(address, 0) + n
        return total

    def valid_workers_downscaling(self, scheduler: Scheduler, workers: list[WorkerState]) -> list[WorkerState]:
        hosted = self.hosted()
        return [ws for ws in workers if ws.address not in hosted]

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        for workers in self.hosts.values():
            workers.pop(worker, None)


class WorkerScaler:
    """Adds and gives back workers for the autoscaler; this base class cannot (it says why)."""

    reason = "the cluster has no way to add workers (connect() to a client without a scalable .cluster)"

    async def add(self, gpu: bool) -> str:
        """Start one more worker of the kind (GPU-tagged or not); its address. Raises ``DeploymentError``."""
        raise DeploymentError(self.reason)

    async def remove(self, address: str) -> None:
        """Give back a worker this scaler added."""
        raise DeploymentError(self.reason)

    def added(self, address: str) -> bool:
        """Whether this scaler started the worker at ``address``."""
        return False


class Controller:
    """Places and re-places the replicas of one deployment's stages (runs on its loop)."""

    def __init__(
        self,
        name: str,
        pool: ConnectionPool,
        scheduler: str,
        stages: dict[str, StageRuntime],
        scaler: WorkerScaler | None = None,
        stage_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.pool = pool
        self.scheduler = scheduler
        self.stages = {k: s for k, s in stages.items() if not s.stage.in_router}
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self.supervisor = Supervisor(name)
        self.health = HealthPolicy(stage_timeout)
        self._lock = asyncio.Lock()
        self.last_error: BaseException | None = None
        self._orphans: dict[str, list[str]] = {}
        self._stops: set[asyncio.Task[Any]] = set()
        self._retiring: dict[str, str] = {}  # replica id -> worker, out of routing, stopped soon
        self._delayed: set[asyncio.Task[Any]] = set()
        self.scaler = scaler or WorkerScaler()
        self.policy: AutoscalePolicy | None = None
        self._applying: set[asyncio.Task[Any]] = set()
        self._reported: dict[str, int] | None = None
        self._hosted: dict[str, int] = {}
        self._floors: dict[str, int] = {}
        self._closed = False

    async def deploy(self) -> None:
        """Place every stage, then keep watching.

        Raises ``DeploymentError`` when a stage cannot be placed, and the ``OperatorError`` of a
        class-based operator that fails to build.
        """
        try:
            await self.reconcile(strict=True)
        except BaseException:
            await self.close()
            raise
        self.supervisor.loop("watch", self.reconcile, WATCH_INTERVAL, wake=self._wake)
        self.supervisor.loop("health", self.check_health, PROBE_INTERVAL)

    async def reconcile(self, strict: bool = False) -> None:
        """Drop replicas on vanished workers and start the missing ones."""
        async with self._lock:
            workers = await list_workers(self.pool, self.scheduler)
            alive = {w.address for w in workers}
            for srt in self.stages.values():
                for replica in [r for r in (*srt.replicas, *srt.draining) if r.worker not in alive]:
                    srt.remove(replica)
                    self.health.forget(replica.id)
            load: dict[str, int] = {}  # a draining replica still occupies its worker
            for srt in self.stages.values():
                for r in (*srt.replicas, *srt.draining):
                    load[r.worker] = load.get(r.worker, 0) + 1
            if strict and not workers:
                raise DeploymentError(f"deploy {self.name!r}: the cluster has no workers")
            placements = []
            for srt in self.stages.values():
                for worker in new_placements(srt.stage, workers, [r.worker for r in srt.replicas], load):
                    load[worker] = load.get(worker, 0) + 1
                    placements.append((srt, worker))
            for worker, ids in self._orphans.items():
                if worker in alive:
                    self._spawn_stop(worker, ids)
            self._orphans.clear()
            for srt in self.stages.values():
                self._floors[srt.stage.name] = target_replicas(srt.stage, len(_eligible(srt, workers)))
            starts = [self._start(srt, worker) for srt, worker in placements]
            results = await asyncio.gather(*starts, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures and strict:
                raise failures[0]
        await self.report_hosts()

    async def report_hosts(self, force: bool = False) -> dict[str, int]:
        """Tell the scheduler's guard which workers host this deployment's replicas (when that
        changed, or ``force``); the replicas per worker over every deployment."""
        mine: dict[str, int] = {}
        for srt in self.stages.values():
            for r in srt.replicas:
                mine[r.worker] = mine.get(r.worker, 0) + 1
        if force or mine != self._reported:
            self._hosted = await asyncio.wait_for(
                self.pool(self.scheduler).cf_replica_hosts(deployment=self.name, workers=mine), 10
            )
            self._reported = mine
        return self._hosted

    async def _start(self, srt: StageRuntime, worker: str) -> None:
        stage = srt.stage
        replica = ReplicaRef(stage.name, f"{self.name}/{stage.name}/{next(self._ids)}", worker)
        spec = StageSpec(stage.name, labelled(stage.program), stage.batching, stage.gpu, srt.limit)
        try:
            reply = await asyncio.wait_for(
                self.pool(worker).cf_start(replica=replica.id, spec=to_serialize(spec)), START_TIMEOUT
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise DeploymentError(f"stage {stage.name!r}: could not start a replica on {worker}: {exc}") from exc
        if reply["status"] != "ok":  # a class-based operator failed to build: its OperatorError
            self.last_error = unpack_error(reply)
            raise self.last_error
        srt.add(replica, reply["device"])

    def poke(self) -> None:
        """Reconcile soon."""
        self._wake.set()

    def worker_lost(self, worker: str) -> None:
        """The router could not reach ``worker``: stop routing to it and reconcile."""
        for srt in self.stages.values():
            for replica in [r for r in srt.replicas if r.worker == worker]:
                srt.remove(replica)
                self._orphans.setdefault(worker, []).append(replica.id)
        self.poke()

    def _spawn_stop(self, worker: str, ids: list[str], delay: float = 0.0) -> None:
        """Stop replicas on a worker, after ``delay`` seconds (errors ignored)."""
        if delay:
            self._retiring.update(dict.fromkeys(ids, worker))
        task = asyncio.ensure_future(self._stop_later(worker, ids, delay))
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)
        if delay:
            self._delayed.add(task)
            task.add_done_callback(self._delayed.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _stop_later(self, worker: str, ids: list[str], delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        try:
            await asyncio.wait_for(self.pool(worker).cf_stop(replicas=ids), 5)
        finally:
            for rid in ids:
                self._retiring.pop(rid, None)

    def replica_lost(self, replica: ReplicaRef) -> None:
        """A worker no longer knows ``replica`` (it restarted): replace it."""
        self.stages[replica.stage].remove(replica)
        self.poke()

    # -- health ---------------------------------------------------------------------------------

    async def check_health(self) -> None:
        """Probe the workers hosting replicas; drain unhealthy replicas and stop drained idle ones."""
        serving = [Serving(n, r.id, r.worker) for n, srt in self.stages.items() for r in srt.replicas]
        asked: dict[str, list[str]] = {}
        for rep in serving:
            asked.setdefault(rep.worker, []).append(rep.replica)
        for rep, _ in self.health.draining.values():
            asked.setdefault(rep.worker, []).append(rep.replica)
        workers = list(asked)
        replies = await asyncio.gather(*(self._probe(w, asked[w]) for w in workers))
        probes = dict(zip(workers, replies, strict=True))
        for instruction in self.health.step(asyncio.get_running_loop().time(), serving, probes):
            srt = self.stages[instruction.stage]
            found = [r for r in (*srt.replicas, *srt.draining) if r.id == instruction.replica]
            if isinstance(instruction, Drain):
                for replica in found:
                    srt.drain(replica)
                self.supervisor.spawn("drain", self._drain(instruction.worker, instruction.replica))
                self.poke()  # place a replacement
            else:
                for replica in found:
                    srt.remove(replica)
                self._spawn_stop(instruction.worker, [instruction.replica])

    async def _drain(self, worker: str, replica: str) -> None:
        try:
            await asyncio.wait_for(self.pool(worker).cf_drain(replicas=[replica]), PROBE_TIMEOUT)
        except Exception as exc:  # a worker that is gone drains nothing: reconcile forgets it
            if not worker_gone(exc):
                raise

    async def _probe(self, worker: str, replicas: list[str]) -> dict[str, ReplicaProbe] | None:
        """One worker's health replies by replica id; ``None`` when it did not answer in time."""
        try:
            reply = await asyncio.wait_for(self.pool(worker).cf_health(replicas=replicas), PROBE_TIMEOUT)
        except Exception as exc:
            if worker_gone(exc) or isinstance(exc, TimeoutError):
                return None
            raise
        return {rid: ReplicaProbe(*values) for rid, values in reply.items()}

    # -- autoscaling -----------------------------------------------------------------------------

    def start_autoscale(self, options: Autoscale) -> None:
        """Look at the load every ``options.interval`` seconds and apply the policy's decisions."""
        policy = self.policy = AutoscalePolicy(options)
        self.supervisor.loop("autoscale", lambda: self.autoscale_once(policy), options.interval)

    def stop_autoscale(self) -> None:
        """Stop autoscaling (the replicas and workers stay as they are)."""
        self.supervisor.stop("autoscale")

    async def autoscale_once(self, policy: AutoscalePolicy) -> list[Instruction]:
        """One look at the load: the policy's instructions, started (they finish in the background)."""
        workers = await worker_threads(self.pool, self.scheduler)
        hosted = await self.report_hosts(force=True)
        mine = dict(self._reported or {})
        loads = [
            WorkerLoad(
                w.address,
                w.gpu,
                nthreads,
                mine.get(w.address, 0),
                hosted.get(w.address, 0) - mine.get(w.address, 0),
                self.scaler.added(w.address),
            )
            for w, nthreads in workers
        ]
        stages = [self._stage_load(srt) for srt in self.stages.values()]
        instructions = policy.step(asyncio.get_running_loop().time(), stages, loads)
        for instruction in instructions:
            task = asyncio.ensure_future(self._apply(policy, instruction))
            self._applying.add(task)
            task.add_done_callback(self._applying.discard)
        return instructions

    def _stage_load(self, srt: StageRuntime) -> StageLoad:
        recent = list(srt.stats.latencies)[-RECENT:]
        p50 = percentile(recent, 50)
        return StageLoad(
            srt.stage.name,
            tuple(ReplicaLoad(r.id, r.worker, srt.inflight.get(r, 0)) for r in srt.replicas),
            srt.stats.count,
            self._floors.get(srt.stage.name, srt.stage.replicas),
            srt.stage.gpu,
            srt.stage.competitive,
            None if p50 is None else round(p50 * 1000, 3),
        )

    async def _apply(self, policy: AutoscalePolicy, instruction: Instruction) -> None:
        ok, detail = True, ""
        try:
            if isinstance(instruction, AddReplica):
                await self._start(self.stages[instruction.stage], instruction.worker)
            elif isinstance(instruction, RemoveReplica):
                detail = await self._retire_replica(instruction.stage, instruction.replica)
                ok = not detail
            elif isinstance(instruction, AddWorker):
                detail = await self.scaler.add(instruction.gpu)
                self.poke()
            elif isinstance(instruction, RemoveWorker):
                await self.scaler.remove(instruction.address)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        policy.finished(instruction, ok, detail)
        if not self._closed:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await self.report_hosts()

    async def _retire_replica(self, stage: str, replica_id: str) -> str:
        """Take an idle replica out of routing, then stop it; why not, when it was not."""
        srt = self.stages[stage]
        found = [r for r in srt.replicas if r.id == replica_id]
        if not found:
            return "already gone"
        (replica,) = found
        if srt.inflight.get(replica, 0):
            return "calls in flight"
        srt.remove(replica)
        self._spawn_stop(replica.worker, [replica.id], STOP_GRACE)
        return ""

    async def scale(self, stage: str, replicas: int) -> None:
        """Give ``stage`` exactly ``replicas`` replicas (at least its plan's; warm before routed)."""
        if stage not in self.stages:
            known = ", ".join(repr(s) for s in sorted(self.stages)) or "none"
            raise DeploymentError(f"scale: no remote stage {stage!r} (stages: {known})")
        srt = self.stages[stage]
        floor = self._floors.get(stage, srt.stage.replicas)
        if replicas < floor:
            raise DeploymentError(f"scale: stage {stage!r} needs at least {floor} replicas, got {replicas}")
        async with self._lock:
            workers = [w for w, _ in await worker_threads(self.pool, self.scheduler)]
            eligible = _eligible(srt, workers)
            while len(srt.replicas) > replicas:
                victim = min(srt.replicas, key=lambda r: (srt.inflight.get(r, 0), r.id))
                srt.remove(victim)
                self._spawn_stop(victim.worker, [victim.id], STOP_GRACE)
            load: dict[str, int] = {}
            for other in self.stages.values():
                for r in other.replicas:
                    load[r.worker] = load.get(r.worker, 0) + 1
            hosting = [r.worker for r in srt.replicas]
            chosen = []
            for _ in range(replicas - len(hosting)):
                options = [w for w in eligible if not (srt.stage.competitive and w in hosting)]
                if not options:
                    raise DeploymentError(
                        f"scale: competitive stage {stage!r} needs {replicas} distinct workers, "
                        f"{len(eligible)} are suitable"
                    )
                best = min(options, key=lambda w: (hosting.count(w), load.get(w, 0), w))
                hosting.append(best)
                load[best] = load.get(best, 0) + 1
                chosen.append(best)
            await asyncio.gather(*(self._start(srt, w) for w in chosen))
        await self.report_hosts()

    def autoscale_summary(self) -> dict[str, Any]:
        """The ``autoscale`` section of ``dep.stats()``."""
        if self.policy is not None:
            out = self.policy.summary(asyncio.get_running_loop().time())
            for name, view in out["stages"].items():
                view["replicas"] = len(self.stages[name].replicas)  # live, not as of the last look
            out["running"] = self.supervisor.running("autoscale")
        else:
            out = {"enabled": False, "stages": {}}
            for name, srt in self.stages.items():
                out["stages"][name] = {"replicas": len(srt.replicas), "target": self._floors.get(name)}
        out["scaler"] = type(self.scaler).__name__
        if self.last_error is not None:
            out["last_error"] = f"{type(self.last_error).__name__}: {self.last_error}"
        return out

    async def close(self) -> None:
        """Stop watching and autoscaling, and stop every replica (unreachable workers are skipped)."""
        self._closed = True
        await self.supervisor.close()
        for task in list(self._applying):
            task.cancel()
        by_worker: dict[str, list[str]] = {}
        for task in list(self._delayed):
            task.cancel()
        for rid, worker in self._retiring.items():
            by_worker.setdefault(worker, []).append(rid)
        self._retiring.clear()
        for srt in self.stages.values():
            for r in [*srt.replicas, *srt.draining]:
                by_worker.setdefault(r.worker, []).append(r.id)
                srt.remove(r)
        calls: list[Any] = [asyncio.wait_for(self.pool(w).cf_stop(replicas=ids), 5) for w, ids in by_worker.items()]
        calls.append(asyncio.wait_for(self.pool(self.scheduler).cf_replica_hosts(deployment=self.name), 5))
        await asyncio.gather(*calls, return_exceptions=True)


def _eligible(srt: StageRuntime, workers: list[WorkerInfo]) -> list[str]:
    """The workers a stage may run on (none, rather than an error, for a GPU stage without GPUs)."""
    try:
        return eligible_workers(srt.stage, workers)
    except DeploymentError:
        return []
