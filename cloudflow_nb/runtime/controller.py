"""The control plane of a deployment: keeps every stage's replicas placed on live workers.

It asks the scheduler which workers exist (and which are GPU-tagged), starts replicas where
:func:`~cloudflow_nb.runtime.placement.new_placements` says, and reconciles whenever the router
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
added or given back through a :class:`WorkerScaler`.

Ownership: every deployment is registered with the scheduler's
:class:`~cloudflow_nb.runtime.registry.Registry` under a lease that the controller renews every
``lease / 3`` seconds (a loop under its :class:`~cloudflow_nb.runtime.supervise.Supervisor`),
reporting its replicas as it goes; the registry vetoes the retirement of their workers by Dask's
adaptive machinery. A deployment that is not detached dies with its lease: when the scheduler
answers that it is gone (or no renewal got through for a whole lease), the controller marks it
lost (:attr:`Controller.lost`) and the deployment refuses requests. Several clients may attach to
a detached deployment: the lease holder manages (reconciles, heals, scales) and the others follow
the registry's replica list, refreshed every round and when the router reports a lost replica;
when the manager stops renewing, the next follower to renew takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from typing import TYPE_CHECKING, Any

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
from cloudflow_nb.runtime.placement import (
    WorkerInfo,
    eligible_workers,
    new_placements,
    place_replicas,
    replicas_to_remove,
    target_replicas,
)
from cloudflow_nb.runtime.registry import DROP_TIMEOUT, lease_seconds
from cloudflow_nb.runtime.replica import StageSpec
from cloudflow_nb.runtime.routing import ReplicaRef
from cloudflow_nb.runtime.stats import percentile
from cloudflow_nb.runtime.supervise import Supervisor
from cloudflow_nb.runtime.wire import labelled, unpack_error

if TYPE_CHECKING:
    from distributed.core import ConnectionPool

    from cloudflow_nb.runtime.router import StageRuntime

__all__ = ["Controller", "WorkerScaler", "list_workers"]

logger = logging.getLogger("cloudflow_nb")

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
    """Places and re-places the replicas of one deployment's stages (runs on its loop).

    Parameters
    ----------
    name : str
        The deployment's name in the scheduler's registry (no ``/``).
    detached : bool
        Whether the deployment outlives its lease (closed only by name).
    spec : bytes
        What a later client needs to attach (opaque to the scheduler).
    lease : float, optional
        Lease period in seconds; default: dask config ``cloudflow.lease``.
    """

    def __init__(
        self,
        name: str,
        pool: ConnectionPool,
        scheduler: str,
        stages: dict[str, StageRuntime],
        scaler: WorkerScaler | None = None,
        stage_timeout: float = 30.0,
        detached: bool = False,
        spec: bytes = b"",
        lease: float | None = None,
    ) -> None:
        self.name = name
        self.detached = detached
        self.spec = spec
        self.lease = lease_seconds() if lease is None else lease
        self.holder = uuid.uuid4().hex[:8]  # this client's lease token, also in its replicas' ids
        self.managing = False
        self.lost: str | None = None  # why this deployment is gone, once it is
        self.supervisor = Supervisor(name)
        self._refresh = asyncio.Event()
        self._renewed = 0.0  # loop time of the last renewal the scheduler answered
        self.pool = pool
        self.scheduler = scheduler
        self.stages = {k: s for k, s in stages.items() if not s.stage.in_router}
        self._ids = itertools.count()
        self._wake = asyncio.Event()
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
        """Register the deployment, place every stage, then keep watching and renewing its lease.

        Raises ``DeploymentError`` when the name is taken or a stage cannot be placed, and the
        ``OperatorError`` of a class-based operator that fails to build.
        """
        reply = await asyncio.wait_for(
            self.pool(self.scheduler).cf_register(
                name=self.name, holder=self.holder, detached=self.detached, lease=self.lease, spec=self.spec
            ),
            10,
        )
        if reply["status"] != "ok":
            raise DeploymentError(reply["message"])
        self.managing = True
        self._renewed = asyncio.get_running_loop().time()
        self.supervisor.loop("lease", self._renew, self.lease / 3, wake=self._refresh)
        try:
            await self.reconcile(strict=True)
        except BaseException:
            await self.close(stop_replicas=True)
            raise
        self._start_watch()

    async def attach(self) -> None:
        """Join a registered detached deployment: follow its replicas, and manage them when its
        lease is free. Raises ``DeploymentError`` when it is gone."""
        await self._lease_round()
        if self.lost is not None:
            raise DeploymentError(self.lost)
        self.supervisor.loop("lease", self._renew, self.lease / 3, wake=self._refresh)

    # -- the lease -------------------------------------------------------------------------------

    async def _renew(self) -> None:
        """One round of the lease loop: renew (or take over) the lease and follow the registry."""
        if self.managing and asyncio.get_running_loop().time() - self._renewed > self.lease:
            if not self.detached:
                self._lose(
                    f"deployment {self.name!r} could not renew its lease for {self.lease:g} s "
                    "(the scheduler stops its replicas): deploy it again"
                )
                return
            self._set_managing(False)  # another client may hold it by now
        await self._lease_round()

    async def _lease_round(self) -> None:
        """Renew the lease (reporting this client's replicas while managing) and act on the answer."""
        mine = [[r.id, r.stage, r.worker, srt.devices[r]] for srt in self.stages.values() for r in srt.replicas]
        reply = await asyncio.wait_for(
            self.pool(self.scheduler).cf_lease(
                name=self.name, holder=self.holder, replicas=mine if self.managing else None
            ),
            max(1.0, self.lease / 3),
        )
        if reply["status"] == "gone":
            how = "was closed" if self.detached else "lost its lease (its client could not renew it in time)"
            self._lose(f"deployment {self.name!r} {how}; its replicas were stopped: deploy it again")
            return
        if reply["status"] != "ok":
            raise DeploymentError(reply["message"])
        self._renewed = asyncio.get_running_loop().time()
        self._hosted = reply["hosted"]
        self._set_managing(reply["role"] == "manager")
        if self.managing:
            self._reported = {}
            for _, _, worker, _ in mine:
                self._reported[worker] = self._reported.get(worker, 0) + 1
        else:
            self._follow(reply["replicas"])

    def _set_managing(self, managing: bool) -> None:
        """Take over managing the replicas (reconcile soon) or hand it over (stop healing and scaling)."""
        if managing == self.managing:
            return
        self.managing = managing
        if managing:
            logger.info("%s: this client manages the deployment now", self.name)
            self._orphans.clear()  # what it failed to reach while following was not its own
            self._reported = None
            self._start_watch()
            self.poke()
        else:
            logger.info("%s: another client manages the deployment now", self.name)
            self._stop_watch()

    def _follow(self, replicas: list[list[str]]) -> None:
        """Route to the replicas the registry lists (the manager's), and to no others."""
        wanted: dict[str, dict[ReplicaRef, str]] = {name: {} for name in self.stages}
        for rid, stage, worker, device in replicas:
            if stage in wanted:
                wanted[stage][ReplicaRef(stage, rid, worker)] = device
        for name, srt in self.stages.items():
            for r in [r for r in srt.replicas if r not in wanted[name]]:
                srt.remove(r)
            for r, device in wanted[name].items():
                if r not in srt.devices:
                    srt.add(r, device)

    def _lose(self, reason: str) -> None:
        """The deployment is gone: stop every loop, route nowhere, refuse requests (``lost``)."""
        if self.lost is not None:
            return
        logger.warning("%s", reason)
        self.lost = reason
        self.managing = False
        self._stop_watch()
        self.stop_autoscale()
        self.supervisor.stop("lease")
        for srt in self.stages.values():
            for r in list(srt.replicas):
                srt.remove(r)
                if not self.detached:  # the scheduler dropped them too; this reaches workers it cannot
                    self._spawn_stop(r.worker, [r.id])

    def _start_watch(self) -> None:
        """Heal while managing: reconcile placements and probe the replicas' health."""
        if not self.supervisor.running("watch"):
            self.supervisor.loop("watch", self.reconcile, WATCH_INTERVAL, wake=self._wake)
            self.supervisor.loop("health", self.check_health, PROBE_INTERVAL)

    def _stop_watch(self) -> None:
        self.supervisor.stop("watch")
        self.supervisor.stop("health")

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
                hosting = [r.worker for r in srt.replicas]
                hung = {r.worker for r in srt.draining}  # a replacement goes elsewhere when it can
                for worker in new_placements(srt.stage, workers, hosting, load, avoid=hung):
                    load[worker] = load.get(worker, 0) + 1
                    placements.append((srt, worker))
            for worker, ids in self._orphans.items():
                if worker in alive:
                    self._spawn_stop(worker, ids)
            self._orphans.clear()
            for srt in self.stages.values():
                eligible = eligible_workers(srt.stage, workers, strict=False)
                self._floors[srt.stage.name] = target_replicas(srt.stage, len(eligible))
            starts = [self._start(srt, worker) for srt, worker in placements]
            results = await asyncio.gather(*starts, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures and strict:
                raise failures[0]
        await self.report_hosts()

    async def report_hosts(self, force: bool = False) -> dict[str, int]:
        """Report this deployment's replicas to the scheduler's registry while managing (when the
        workers hosting them changed, or ``force``); the replicas per worker over every deployment."""
        mine: dict[str, int] = {}
        for srt in self.stages.values():
            for r in srt.replicas:
                mine[r.worker] = mine.get(r.worker, 0) + 1
        if self.managing and (force or mine != self._reported):
            await self._lease_round()
        return self._hosted

    async def _start(self, srt: StageRuntime, worker: str) -> None:
        stage = srt.stage
        replica = ReplicaRef(stage.name, f"{self.name}/{stage.name}/{self.holder}-{next(self._ids)}", worker)
        spec = StageSpec(stage.name, labelled(stage.program), stage.batching, stage.gpu, srt.limit, stage.concurrent)
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
        """Reconcile soon (when following: refresh the replica list from the registry soon)."""
        self._wake.set()
        if not self.managing:
            self._refresh.set()

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
        """One look at the load: the policy's instructions, started (they finish in the background).

        None while another client manages the deployment."""
        if not self.managing:
            return []
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
            srt.stage.locality,
            srt.stage.concurrent,
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
        if not self.managing:
            raise DeploymentError(
                f"scale: another client attached to deployment {self.name!r} manages its replicas; scale it there"
            )
        srt = self.stages[stage]
        floor = self._floors.get(stage, srt.stage.replicas)
        if replicas < floor:
            raise DeploymentError(f"scale: stage {stage!r} needs at least {floor} replicas, got {replicas}")
        async with self._lock:
            workers = await list_workers(self.pool, self.scheduler)
            load: dict[str, int] = {}
            for other in self.stages.values():
                for r in (*other.replicas, *other.draining):
                    load[r.worker] = load.get(r.worker, 0) + 1
            for victim in replicas_to_remove(srt.replicas, srt.inflight, load, len(srt.replicas) - replicas):
                srt.remove(victim)
                load[victim.worker] -= 1
                self._spawn_stop(victim.worker, [victim.id], STOP_GRACE)
            missing = replicas - len(srt.replicas)
            chosen: list[str] = []
            if missing > 0:
                eligible = eligible_workers(srt.stage, workers)  # a GPU stage without GPU workers: why
                chosen = place_replicas(srt.stage, workers, [r.worker for r in srt.replicas], load, missing)
                if len(chosen) < missing:
                    raise DeploymentError(
                        f"scale: stage {stage!r} needs its replicas on distinct workers (it races plain sync "
                        f"code or uses locality): {replicas} asked, {len(eligible)} workers suitable"
                    )
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

    async def close(self, stop_replicas: bool | None = None) -> None:
        """Stop watching, autoscaling and renewing; stop every replica (unreachable workers are
        skipped) and unregister the deployment, or (detached, or ``stop_replicas=False``) leave
        the replicas running and hand over managing them."""
        stop = not self.detached if stop_replicas is None else stop_replicas
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
                if stop:
                    by_worker.setdefault(r.worker, []).append(r.id)
                srt.remove(r)
        calls: list[Any] = [asyncio.wait_for(self.pool(w).cf_stop(replicas=ids), 5) for w, ids in by_worker.items()]
        registry = self.pool(self.scheduler)
        if self.lost is None:
            if stop:
                calls.append(asyncio.wait_for(registry.cf_close_deployment(name=self.name), DROP_TIMEOUT + 5))
            else:
                calls.append(asyncio.wait_for(registry.cf_release(name=self.name, holder=self.holder), 5))
        self.managing = False
        await asyncio.gather(*calls, return_exceptions=True)
