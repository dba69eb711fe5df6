"""``Deployment``: a flow served on a cluster, with blocking, future and asyncio entry points.

A deployment lives under a lease its client renews with the scheduler's registry
(:mod:`~cloudflow_nb.runtime.registry`): when the client dies, its replicas are dropped. A
detached one (``cluster.deploy(flow, name="x", detached=True)``) outlives its client; any
process attaches to it with ``cf.connect(address).deployment("x")`` (its own router, the same
replicas) until ``cluster.close_deployment("x")`` or :meth:`Deployment.shutdown` ends it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pickle
import uuid
from typing import TYPE_CHECKING, Any

import cloudpickle

from cloudflow_nb.errors import DeploymentError, FlowError, FlowTimeoutError
from cloudflow_nb.runtime.autoscale import Autoscale
from cloudflow_nb.runtime.batchsize import adaptive_batching
from cloudflow_nb.runtime.controller import Controller, WorkerScaler, list_workers
from cloudflow_nb.runtime.registry import valid_name
from cloudflow_nb.runtime.router import DEFAULT_QUEUE, Router, stage_runtimes
from cloudflow_nb.runtime.routing import choose_racers
from cloudflow_nb.table import Table

if TYPE_CHECKING:
    from cloudflow_nb.flow import Flow
    from cloudflow_nb.physical import Plan
    from cloudflow_nb.runtime.loop import LoopThread
    from cloudflow_nb.runtime.placement import WorkerInfo
    from cloudflow_nb.runtime.store import Store

__all__ = ["Deployment"]

DEFAULT_TIMEOUT = 30.0
# How much longer a blocking caller waits than the request's own deadline before giving up.
GRACE = 5.0


class Deployment:
    """A flow deployed on a cluster: warm stage replicas on the workers and a router here.

    Made by ``cluster.deploy(flow)``, or by ``cluster.deployment(name)`` for a detached one made
    elsewhere. Requests go from the router straight to the replicas (never through the
    scheduler); concurrent requests never mix. Replicas scale with :meth:`scale` (by hand) or
    :meth:`autoscale` (from the load, adding cluster workers when the ones there are full).

    The replicas live under a lease this client renews: if the client dies, the scheduler drops
    them within about a lease period (dask config ``cloudflow.lease``, 10 s by default). A
    deployment whose lease was lost refuses requests with ``DeploymentError``. A detached
    deployment stays until closed by name; of the clients attached to it, one manages the
    replicas (heals and scales them) and the others take over when it goes.

    Examples
    --------
    >>> with cluster.deploy(flow) as dep:               # doctest: +SKIP
    ...     dep.predict({"x": 1})
    ...     dep.submit([{"x": 1}, {"x": 2}]).result()
    ...     dep.autoscale(max_replicas=4, scale_down_after=60)
    ...     dep.stats()["autoscale"]
    """

    def __init__(
        self,
        flow: Flow,
        plan: Plan,
        loop: LoopThread,
        scheduler: str,
        store: Store,
        timeout: float,
        scaler: WorkerScaler | None = None,
        max_inflight: int | None = None,
        stage_timeout: float | None = None,
        max_queue: int | None = None,
        name: str | None = None,
        detached: bool = False,
    ) -> None:
        self.flow = flow
        self.plan = plan
        self.timeout = timeout
        self._loop = loop
        self._closed = False
        if name is None:
            base = plan.name.replace("/", "-").strip() or "flow"
            name = base if detached else f"{base}-{uuid.uuid4().hex[:8]}"
        valid_name(name)
        stages = stage_runtimes(plan, max_inflight, DEFAULT_QUEUE if max_queue is None else max_queue)
        spec = cloudpickle.dumps((flow, plan, timeout), protocol=5) if detached else b""
        self._controller = Controller(
            name,
            loop.pool,
            scheduler,
            stages,
            scaler,
            stage_timeout or timeout,
            detached=detached,
            spec=spec,
        )
        self._router = Router(plan, stages, loop.pool, store, self._controller)

    @classmethod
    def attach(
        cls, info: dict[str, Any], loop: LoopThread, scheduler: str, store: Store, scaler: WorkerScaler | None = None
    ) -> Deployment:
        """Attach to the detached deployment the registry describes in ``info`` (``cf_deployment``)."""
        flow, plan, timeout = pickle.loads(info["spec"])  # written by a client of this same cluster
        dep = cls(flow, plan, loop, scheduler, store, timeout, scaler, name=info["name"], detached=True)
        dep._loop.run(dep._controller.attach(), timeout=30)
        return dep

    def start(self) -> Deployment:
        """Register the deployment and place and warm every stage's replicas (``DeploymentError``
        when the name is taken or a replica cannot be placed)."""
        try:
            self._loop.run(self._controller.deploy(), timeout=DEFAULT_TIMEOUT * 4)
        except concurrent.futures.TimeoutError:
            raise DeploymentError(f"deploy {self.name!r}: replicas did not start in time") from None
        return self

    @property
    def name(self) -> str:
        """The deployment's name in the cluster (``cluster.deployments()`` lists them)."""
        return self._controller.name

    @property
    def detached(self) -> bool:
        """Whether it outlives this client (closed only by name)."""
        return self._controller.detached

    # -- requests -------------------------------------------------------------------------------

    def submit(self, request: Any, timeout: float | None = None) -> concurrent.futures.Future[Table]:
        """Send a request; a ``concurrent.futures.Future`` of its ``cf.Table``.

        The request is validated here: a bad one raises ``SchemaError`` before anything is sent.
        """
        self._check_open()
        table = Table.from_request(request, self.flow.input_schema, where=f"flow {self.plan.name!r} request")
        return self._loop.submit(self._router.predict(table, self.timeout if timeout is None else timeout))

    def predict(self, request: Any, timeout: float | None = None) -> Table:
        """Send a request and wait for its ``cf.Table`` (``FlowTimeoutError`` after ``timeout`` s)."""
        limit = self.timeout if timeout is None else timeout
        future = self.submit(request, limit)
        try:
            return future.result(limit + GRACE)
        except FlowError:
            raise
        except concurrent.futures.TimeoutError:  # the router itself did not answer in time
            future.cancel()
            raise FlowTimeoutError(f"flow {self.plan.name!r}: no answer within {limit:g} s") from None

    async def apredict(self, request: Any, timeout: float | None = None) -> Table:
        """``await dep.apredict(request)``: the same as :meth:`predict`, for asyncio code."""
        return await asyncio.wrap_future(self.submit(request, timeout))

    # -- scaling --------------------------------------------------------------------------------

    def autoscale(self, options: Autoscale | None = None, **kwargs: Any) -> Deployment:
        """Scale replicas (and cluster workers) with the load, from now until :meth:`close`.

        Every ``interval`` seconds a stage whose calls in flight per replica reach
        ``target_inflight`` gains replicas (up to ``max_replicas``), built and warm before any call
        reaches them, on a suitable worker with room (``replicas_per_worker`` per thread; GPU
        stages on GPU-tagged workers; a competitive stage of plain sync code once per worker). When no worker has
        room the cluster is asked for one more (a ``cf.LocalCluster`` starts it; a connected
        cluster whose client has a scalable ``.cluster`` is scaled; otherwise the decision is
        recorded). A stage idle for ``scale_down_after`` seconds loses one replica at a time, never
        below ``min_replicas`` or its plan's replicas; added workers idle for
        ``worker_idle_after`` seconds are given back. ``dep.stats()["autoscale"]`` shows replicas,
        targets and the last decisions with their reasons. Call again to change the options;
        :meth:`stop_autoscale` stops it.

        Parameters
        ----------
        options : Autoscale, optional
            The options; or pass them as keywords (``min_replicas``, ``max_replicas``,
            ``target_inflight``, ``interval``, ``scale_down_after``, ``up_after``,
            ``replicas_per_worker``, ``max_workers``, ``worker_idle_after``).
        """
        if options is not None and kwargs:
            raise DeploymentError("autoscale: pass an Autoscale object or keywords, not both")
        try:
            opts = options if options is not None else Autoscale(**kwargs)
        except (TypeError, ValueError) as exc:
            raise DeploymentError(str(exc)) from None
        self._check_open()
        self._loop.run(_call(self._controller.start_autoscale, opts), timeout=10)
        return self

    def stop_autoscale(self) -> None:
        """Stop autoscaling; replicas and workers stay as they are."""
        if not self._closed:
            self._loop.run(_call(self._controller.stop_autoscale), timeout=10)

    def scale(self, stage: str, replicas: int) -> None:
        """Run exactly ``replicas`` warm replicas of the remote stage named ``stage``.

        New replicas are built before the router sends them calls; removed ones leave routing
        first. Not below the stage's plan (``DeploymentError``). A running :meth:`autoscale`
        keeps adjusting from there.
        """
        self._check_open()
        try:
            self._loop.run(self._controller.scale(stage, replicas), timeout=DEFAULT_TIMEOUT * 4)
        except concurrent.futures.TimeoutError:
            raise DeploymentError(f"scale {stage!r}: replicas did not start in time") from None

    def _check_open(self) -> None:
        if self._loop.closed:
            raise DeploymentError(f"deployment {self.name!r} is closed: {self._loop.closed_message}")
        if self._closed:
            raise DeploymentError(f"deployment {self.name!r} is closed")
        if self._controller.lost is not None:
            raise DeploymentError(self._controller.lost)

    # -- inspection and lifecycle ---------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per-request and per-stage figures: counts, errors, retries, latency percentiles (ms),
        batch sizes, where each replica runs, the seconds calls held replicas (``replica_seconds``,
        race losers' and hedges' included) and a hedged stage's ``hedge`` counts (``sent``,
        ``won``, its threshold), for a competitive stage the ``racers`` a raced call gets (fewer
        than asked when a plain sync stage has fewer suitable workers) and whether ``racing`` pays
        (:class:`~cloudflow_nb.runtime.racepolicy.RacePolicy`'s decision and figures), for a
        batching stage whether its replicas find batches worth it (``adaptive_batching``, see
        :mod:`~cloudflow_nb.runtime.batchsize`); under ``"autoscale"``, replicas and targets per
        stage, workers added and removed and the autoscaler's last decisions."""
        return self._loop.run(self._stats(), timeout=10)

    async def _stats(self) -> dict[str, Any]:
        stages = {}
        for name, srt in self._router.stages.items():
            stage = srt.stage
            stages[name] = {
                **srt.stats.summary(),
                "replicas": [
                    {"worker": r.worker, "device": srt.devices[r], "calls": srt.answered[r]} for r in srt.replicas
                ],
                "gpu": stage.gpu,
                "competitive": stage.competitive,
                "concurrent": stage.concurrent,
                "racers": len(choose_racers(srt.replicas, {}, stage.replicas, shared=stage.concurrent))
                if stage.competitive
                else None,
                "racing": None if srt.race is None else srt.race.summary(),
                "hedge": None if srt.hedge is None else srt.hedge.summary(),
                "replica_seconds": round(srt.replica_seconds, 6),
                "batching": stage.batching.max_batch_size if stage.batching else None,
                "adaptive_batching": adaptive_batching(stage.batching, srt.batch_costs.values()),
                "locality": stage.locality,
                "in_router": stage.in_router,
                "max_inflight": srt.limit,
                "max_queue": srt.max_queue,
                "queued": len(srt.waiting),
                "inflight": sum(srt.inflight.values()),
                "draining": [r.worker for r in srt.draining],
            }
        return {
            "flow": self.plan.name,
            "requests": self._router.requests.summary(),
            "stages": stages,
            "autoscale": self._controller.autoscale_summary(),
            "health": self._controller.health.summary(),
            "background": self._controller.supervisor.summary(),
            "lease": {
                "name": self.name,
                "detached": self.detached,
                "seconds": self._controller.lease,
                "managing": self._controller.managing,
                "lost": self._controller.lost,
            },
        }

    def workers(self) -> list[WorkerInfo]:
        """The cluster's running workers: address and whether they are GPU-tagged."""
        self._check_open()
        return self._loop.run(list_workers(self._loop.pool, self._controller.scheduler), timeout=10)

    def close(self) -> None:
        """Stop the replicas (idempotent); requests still running and later ones raise ``DeploymentError``.

        On a detached deployment this only detaches this client: the replicas keep running for the
        other clients and later ones (``cluster.deployment(name)``); :meth:`shutdown` or
        ``cluster.close_deployment(name)`` stops them.
        """
        self._end(stop_replicas=None)

    def shutdown(self) -> None:
        """Stop the replicas for every client, detached or not, and close this handle.

        Other clients attached to a detached deployment see ``DeploymentError`` from then on.
        """
        self._end(stop_replicas=True)

    def _end(self, stop_replicas: bool | None) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._loop.closed:
            self._loop.run(self._router.close(), timeout=10)
            self._loop.run(self._controller.close(stop_replicas), timeout=30)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._closed

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """A snapshot: the plan's graph with each stage's figures now (text without ``dot``), and
        a pointer to ``cf.watch(dep)``, the live view. Never raises."""
        from cloudflow_nb.figures import deployment_bundle

        return deployment_bundle(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.plan.stages)} stages"
        kind = ", detached" if self.detached else ""
        return f"<cf.Deployment {self.name!r}{kind}: {state}>"


async def _call(fn: Any, *args: Any) -> None:
    """Run a plain function on the deployment's loop."""
    fn(*args)
