"""The control plane of a deployment: keeps every stage's replicas placed on live workers.

It asks the scheduler which workers exist (and which are GPU-tagged), starts replicas where
:func:`~cloudflow_nb.runtime.routing.new_placements` says, and reconciles whenever the router
reports a lost worker or replica, and every :data:`WATCH_INTERVAL` seconds: replicas on vanished
workers are dropped and re-placed when capacity exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import TYPE_CHECKING, Any

from distributed.protocol.serialize import to_serialize

from cloudflow_nb.errors import DeploymentError, FlowError
from cloudflow_nb.runtime.replica import StageSpec
from cloudflow_nb.runtime.routing import ReplicaRef, WorkerInfo, new_placements
from cloudflow_nb.runtime.wire import labelled, unpack_error

if TYPE_CHECKING:
    from distributed.core import ConnectionPool

    from cloudflow_nb.runtime.router import StageRuntime

__all__ = ["Controller", "list_workers"]

WATCH_INTERVAL = 0.5
START_TIMEOUT = 120.0


async def list_workers(pool: ConnectionPool, scheduler: str) -> list[WorkerInfo]:
    """The scheduler's running workers, GPU-tagged or not."""
    info = await pool(scheduler).identity()
    return [
        WorkerInfo(address, bool((w.get("resources") or {}).get("GPU")))
        for address, w in sorted(info["workers"].items())
        if w.get("status", "running") == "running"
    ]


class Controller:
    """Places and re-places the replicas of one deployment's stages (runs on its loop)."""

    def __init__(self, name: str, pool: ConnectionPool, scheduler: str, stages: dict[str, StageRuntime]) -> None:
        self.name = name
        self.pool = pool
        self.scheduler = scheduler
        self.stages = {k: s for k, s in stages.items() if not s.stage.in_router}
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.last_error: BaseException | None = None
        self._orphans: dict[str, list[str]] = {}
        self._stops: set[asyncio.Task[Any]] = set()

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
        self._watcher = asyncio.ensure_future(self._watch())

    async def reconcile(self, strict: bool = False) -> None:
        """Drop replicas on vanished workers and start the missing ones."""
        async with self._lock:
            workers = await list_workers(self.pool, self.scheduler)
            alive = {w.address for w in workers}
            for srt in self.stages.values():
                for replica in [r for r in srt.replicas if r.worker not in alive]:
                    srt.remove(replica)
            load: dict[str, int] = {}
            for srt in self.stages.values():
                for r in srt.replicas:
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
            starts = [self._start(srt, worker) for srt, worker in placements]
            results = await asyncio.gather(*starts, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures and strict:
                raise failures[0]

    async def _start(self, srt: StageRuntime, worker: str) -> None:
        stage = srt.stage
        replica = ReplicaRef(stage.name, f"{self.name}/{stage.name}/{next(self._ids)}", worker)
        spec = StageSpec(stage.name, labelled(stage.program), stage.batching, stage.gpu)
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

    def _spawn_stop(self, worker: str, ids: list[str]) -> None:
        """Stop replicas on a worker that turned out to be alive after all (errors ignored)."""
        task = asyncio.ensure_future(asyncio.wait_for(self.pool(worker).cf_stop(replicas=ids), 5))
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def replica_lost(self, replica: ReplicaRef) -> None:
        """A worker no longer knows ``replica`` (it restarted): replace it."""
        self.stages[replica.stage].remove(replica)
        self.poke()

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), WATCH_INTERVAL)
            self._wake.clear()
            try:
                await self.reconcile()
            except (OSError, FlowError, asyncio.TimeoutError) as exc:  # try again on the next round
                self.last_error = exc

    async def close(self) -> None:
        """Stop watching and stop every replica (unreachable workers are skipped)."""
        if self._watcher is not None:
            self._watcher.cancel()
        by_worker: dict[str, list[str]] = {}
        for srt in self.stages.values():
            for r in list(srt.replicas):
                by_worker.setdefault(r.worker, []).append(r.id)
                srt.remove(r)
        calls: list[Any] = [asyncio.wait_for(self.pool(w).cf_stop(replicas=ids), 5) for w, ids in by_worker.items()]
        await asyncio.gather(*calls, return_exceptions=True)
