"""Clusters to serve on: an embedded ``LocalCluster`` with GPU-tagged workers, or ``connect()``.

A :class:`Cluster` wraps a synchronous ``distributed.Client``. On first use of a Dask cluster it
registers cloudflow's scheduler plugin (the store directory) and worker plugin (store values and
stage replicas; it also sets up workers that join later). Requests and store traffic then go from
this process's own loop thread straight to the workers.

Deployments scale with ``dep.scale`` and ``dep.autoscale``; when the autoscaler needs a worker it
asks the cluster through Dask's own machinery: a ``LocalCluster`` adds a worker spec of the needed
kind to its ``SpecCluster``, a connected client's ``.cluster`` is ``scale``-d when it has one. The
scheduler's deployment registry (:mod:`~cloudflow_nb.runtime.registry`) keeps Dask's adaptive
scaling from retiring workers that host replicas, drops the replicas of a client that died, and
keeps detached deployments by name for any client to attach to (:meth:`Cluster.deployment`).
"""

from __future__ import annotations

import asyncio
import functools
import glob
import html
import inspect
import itertools
import logging
import os
from typing import TYPE_CHECKING, Any

import dask
from distributed import Client, Nanny, Scheduler, SpecCluster, Worker
from distributed.security import Security

from cloudflow_nb.errors import DeploymentError
from cloudflow_nb.runtime.controller import WorkerScaler, list_workers
from cloudflow_nb.runtime.deployment import DEFAULT_TIMEOUT, Deployment
from cloudflow_nb.runtime.loop import LoopThread
from cloudflow_nb.runtime.mainguard import check_main_guard
from cloudflow_nb.runtime.placement import WorkerInfo
from cloudflow_nb.runtime.registry import Registry, valid_name
from cloudflow_nb.runtime.replica import CloudflowWorker
from cloudflow_nb.runtime.store import Store, StoreDirectory

if TYPE_CHECKING:
    from cloudflow_nb.flow import Flow
    from cloudflow_nb.optimize.options import Optimize

__all__ = ["Cluster", "LocalCluster", "connect"]

# A task asking for a resource no worker has fails after this instead of waiting forever.
NO_WORKERS_TIMEOUT = "30s"
# Seconds cf.connect waits for a scheduler to answer (Dask's own default is 30).
CONNECT_TIMEOUT = 5.0
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class Cluster:
    """A Dask cluster that cloudflow deploys flows on.

    Parameters
    ----------
    client : distributed.Client
        A synchronous client of the cluster.
    own_client : bool
        Close ``client`` on :meth:`close` (only when this object created it).
    """

    def __init__(self, client: Client, own_client: bool = False) -> None:
        if client.asynchronous:
            raise DeploymentError("connect: needs a synchronous distributed.Client, got an asynchronous one")
        self.client = client
        self._own_client = own_client
        self._deployments: list[Deployment] = []
        client.register_plugin(StoreDirectory())
        client.register_plugin(Registry())
        client.register_plugin(CloudflowWorker())
        self.scheduler_address: str = client.scheduler.address
        self._loop = LoopThread(
            client.connection_args,
            closed_message=f"cluster {self.scheduler_address!r} is closed (start a new one, or cf.connect(address))",
        )
        self.store = Store(self._loop, self.scheduler_address)

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard's URL, when the scheduler serves one."""
        try:
            return self.client.dashboard_link
        except Exception:
            return None

    def workers(self) -> list[WorkerInfo]:
        """The running workers: address and whether they are GPU-tagged."""
        return self._loop.run(list_workers(self._loop.pool, self.scheduler_address), timeout=10)

    def worker_report(self) -> list[dict[str, Any]]:
        """One entry per running worker: ``address``, ``name``, ``gpu`` (GPU-tagged), ``threads``,
        ``memory`` and ``memory_limit`` (bytes; ``None`` when unknown) and ``replicas`` (the
        ``"deployment/stage"`` of every replica it hosts, from any client).

        The replicas of this client's own deployments are live; those of other clients' are as
        their managers last reported them (every few seconds).
        """
        identity = self._loop.run(self._loop.pool(self.scheduler_address).identity(), timeout=10)
        placed: dict[str, list[list[str]]] = self._loop.run(self._registry().cf_replicas(), timeout=10)
        for dep in self._deployments:
            if not dep.closed:
                stages = dep.stats()["stages"].items()
                placed[dep.name] = [["", stage, r["worker"]] for stage, st in stages for r in st["replicas"]]
        return worker_rows(identity["workers"], placed)

    def deploy(
        self,
        flow: Flow,
        optimize: bool | Optimize = True,
        timeout: float = DEFAULT_TIMEOUT,
        max_inflight: int | None = None,
        max_queue: int | None = None,
        stage_timeout: float | None = None,
        *,
        name: str | None = None,
        detached: bool = False,
    ) -> Deployment:
        """Optimize ``flow``, start warm replicas of each stage on suitable workers, and serve it.

        The deployment's replicas then scale by hand (``dep.scale(stage, n)``) or with the load
        (``dep.autoscale(...)``, which may add workers to this cluster and give them back). They
        live as long as this client renews their lease; a detached deployment lives until
        :meth:`close_deployment` (or ``dep.shutdown()``), and other processes attach to it with
        :meth:`deployment`.

        Parameters
        ----------
        flow : cf.Flow
            What to serve.
        optimize : bool or cf.Optimize
            ``True``: the default rewrites, ``False``: none, or the options to use.
        timeout : float
            The default deadline of each request, in seconds.
        max_inflight : int, optional
            Calls one replica may hold at once, running or queued on its worker (admission
            control). Default: 4, or two batches for batching stages.
        max_queue : int, optional
            Calls per stage that may wait here for a replica with room (default 100); a request
            that finds the queue full fails at once with ``cf.OverloadError`` (HTTP 429).
        stage_timeout : float, optional
            Seconds one call may run before its replica counts as hung and is replaced (default:
            ``timeout``).
        name : str, optional
            The deployment's name in the cluster; default: the flow's name (plus a unique suffix
            unless detached). A name already running raises ``DeploymentError``.
        detached : bool
            Outlive this client: closed only by name.

        Examples
        --------
        >>> dep = cluster.deploy(flow, name="cascade", detached=True)   # doctest: +SKIP
        >>> cf.connect(address).deployment("cascade").predict(request)   # doctest: +SKIP
        """
        plan = flow.optimize(optimize)
        dep = Deployment(
            flow,
            plan,
            self._loop,
            self.scheduler_address,
            self.store,
            timeout,
            self._scaler(),
            max_inflight=max_inflight,
            stage_timeout=stage_timeout,
            max_queue=max_queue,
            name=name,
            detached=detached,
        ).start()
        self._deployments.append(dep)
        return dep

    def deployment(self, name: str) -> Deployment:
        """Attach to the detached deployment ``name``: a handle with its own router, serving on the
        deployment's replicas. ``close()`` on it detaches only this client.

        Raises ``DeploymentError`` when no detached deployment of that name is running.
        """
        info = self._loop.run(self._registry().cf_deployment(name=valid_name(name)), timeout=10)
        if info is None:
            running = ", ".join(repr(n) for n in self.deployments()) or "none"
            raise DeploymentError(f"no deployment named {name!r} is running (deployments: {running})")
        if not info["detached"]:
            raise DeploymentError(
                f"deployment {name!r} is not detached: it belongs to the client that made it "
                "(deploy with detached=True to attach from elsewhere)"
            )
        dep = Deployment.attach(info, self._loop, self.scheduler_address, self.store, self._scaler())
        self._deployments.append(dep)
        return dep

    def deployments(self) -> list[str]:
        """The names of the deployments running on this cluster (from any client), sorted."""
        return list(self._loop.run(self._registry().cf_deployments(), timeout=10))

    def close_deployment(self, name: str) -> None:
        """Stop the replicas of deployment ``name`` (detached or not) for every client attached to it.

        Raises ``DeploymentError`` when no deployment of that name is running.
        """
        mine = [d for d in self._deployments if d.name == valid_name(name)]
        for dep in mine:
            dep.shutdown()
            self._deployments.remove(dep)
        if not self._loop.run(self._registry().cf_close_deployment(name=name), timeout=30) and not mine:
            running = ", ".join(repr(n) for n in self.deployments()) or "none"
            raise DeploymentError(f"no deployment named {name!r} is running (deployments: {running})")

    def _registry(self) -> Any:
        """The scheduler's deployment registry, as an RPC on this cluster's loop."""
        return self._loop.pool(self.scheduler_address)

    def _scaler(self) -> WorkerScaler:
        """How the autoscaler adds workers: the client's ``.cluster.scale`` when it has one."""
        cluster = getattr(self.client, "cluster", None)
        if cluster is not None and callable(getattr(cluster, "scale", None)):
            return ScaleScaler(self.client, cluster)
        return WorkerScaler()

    def close(self) -> None:
        """Close the deployments made here, then what this object created (never a client it was given)."""
        for dep in self._deployments:
            dep.close()
        self._deployments.clear()
        self._loop.close()
        if self._own_client:
            self.client.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<cf.{type(self).__name__} {self.scheduler_address}>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._loop.closed

    def _repr_html_(self) -> str:
        return self._repr_mimebundle_().get("text/html", html.escape(repr(self)))

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """Its workers with their tags, memory and the replicas they host (``cf.watch(cluster)``
        keeps the table live); never raises."""
        from cloudflow_nb.figures import cluster_bundle

        return cluster_bundle(self)


class LocalCluster(Cluster):
    """An embedded Dask cluster on this machine with CPU workers and GPU-tagged workers.

    Parameters
    ----------
    workers : int
        CPU workers.
    gpu_workers : int
        Workers tagged ``resources={"GPU": 1}``; with CUDA devices present each one sees its own
        device through ``CUDA_VISIBLE_DEVICES``.
    threads_per_worker : int
        Dask threads per worker (replicas run in threads of their own).
    processes : bool
        Worker processes (default) or in-process workers.
    dashboard : bool
        Serve the Dask dashboard on a free port.
    compute_threads : int, optional
        ``OMP/MKL/OPENBLAS_NUM_THREADS`` in each worker process; default: cores / workers.
    security : distributed.Security or bool, optional
        TLS for the scheduler, the workers, this client and the fast request path: a Dask
        ``Security`` with certificates, or ``True`` for temporary ones (``Security.temporary()``).

    The autoscaler (``dep.autoscale``) may add workers of either kind, with the same options, and
    give them back when they are idle.

    Examples
    --------
    >>> with cf.LocalCluster(workers=2, gpu_workers=1) as cluster:   # doctest: +SKIP
    ...     dep = cluster.deploy(flow)
    """

    def __init__(
        self,
        workers: int = 2,
        gpu_workers: int = 1,
        threads_per_worker: int = 1,
        processes: bool = True,
        dashboard: bool = True,
        compute_threads: int | None = None,
        security: Security | bool | None = None,
    ) -> None:
        if workers < 0 or gpu_workers < 0 or workers + gpu_workers == 0:
            raise DeploymentError(
                f"LocalCluster: needs at least one worker (workers={workers!r}, gpu_workers={gpu_workers!r})"
            )
        if processes:
            check_main_guard(inspect.currentframe(), dask.config.get("distributed.worker.multiprocessing-method"))
        tls = _tls_security(security)
        self._spec = functools.partial(
            _worker_spec,
            compute_threads or max(1, (os.cpu_count() or 1) // (workers + gpu_workers)),
            threads_per_worker,
            processes,
            _cuda_devices(),
            tls,
        )
        specs = {f"cpu-{i}": self._spec(False, i) for i in range(workers)}
        specs.update({f"gpu-{i}": self._spec(True, i) for i in range(gpu_workers)})
        self._next = {False: itertools.count(workers), True: itertools.count(gpu_workers)}
        scheduler = {
            "cls": Scheduler,
            "options": {
                "host": "127.0.0.1",
                "protocol": "tls://" if tls else "tcp://",
                "port": 0,
                "dashboard": dashboard,
                "dashboard_address": ":0",
                "security": tls,
            },
        }
        # The nannies' default pre-spawn environment trims malloc aggressively (slow for models)
        # and writes its variables into this process too; thread counts go per worker instead.
        config: dict[str, str | None] = {"distributed.scheduler.no-workers-timeout": NO_WORKERS_TIMEOUT}
        for var in ("MALLOC_TRIM_THRESHOLD_", *_THREAD_VARS):
            config[f"distributed.nanny.pre-spawn-environ.{var}"] = None
        with dask.config.set(config):
            self.cluster = SpecCluster(
                workers=specs, scheduler=scheduler, silence_logs=logging.ERROR, name="cloudflow", security=tls
            )
        try:
            super().__init__(Client(self.cluster), own_client=True)
        except BaseException:
            self.cluster.close()
            raise

    def _scaler(self) -> WorkerScaler:
        return SpecScaler(self)

    def close(self) -> None:
        """Close deployments, the client and the cluster."""
        try:
            super().close()
        finally:
            self.cluster.close()


def worker_rows(workers: dict[str, dict[str, Any]], placed: dict[str, list[list[str]]]) -> list[dict[str, Any]]:
    """:meth:`Cluster.worker_report`'s rows from the scheduler's ``identity()["workers"]`` and the
    replicas per deployment (``[id, stage, worker, device]`` lists), sorted by address."""
    hosted: dict[str, list[str]] = {}
    for name, replicas in sorted(placed.items()):
        for _, stage, worker, *_ in replicas:
            hosted.setdefault(worker, []).append(f"{name}/{stage}")
    rows = []
    for address, info in sorted(workers.items()):
        if info.get("status", "running") != "running":
            continue
        memory = (info.get("metrics") or {}).get("memory")
        rows.append(
            {
                "address": address,
                "name": str(info.get("name", address)),
                "gpu": bool((info.get("resources") or {}).get("GPU")),
                "threads": int(info.get("nthreads") or 1),
                "memory": int(memory) if memory is not None else None,
                "memory_limit": int(info["memory_limit"]) if info.get("memory_limit") else None,
                "replicas": sorted(hosted.get(address, [])),
            }
        )
    return rows


def _tls_security(security: Security | bool | None) -> Security | None:
    """The ``Security`` a ``LocalCluster`` runs with (``None``: plain ``tcp://``)."""
    if security is None or security is False:
        return None
    if security is True:
        return Security.temporary()
    if isinstance(security, Security):
        return security
    raise DeploymentError(
        f"LocalCluster: security must be a distributed.Security, True or None, got {type(security).__name__}"
    )


def _worker_spec(
    threads: int,
    threads_per_worker: int,
    processes: bool,
    devices: list[str],
    security: Security | None,
    gpu: bool,
    index: int,
) -> dict[str, Any]:
    """A ``SpecCluster`` worker spec: a CPU worker, or the ``index``-th GPU-tagged one (over TLS
    with ``security``)."""
    options: dict[str, Any] = {"nthreads": threads_per_worker, "host": "127.0.0.1"}
    if security is not None:
        options.update(protocol="tls://", security=security)
    if gpu:
        options["resources"] = {"GPU": 1}
    if processes:
        env = dict.fromkeys(_THREAD_VARS, str(threads))
        if gpu and devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
        options.update(env=env, silence_logs=logging.ERROR)
    return {"cls": Nanny if processes else Worker, "options": options}


class ScaleScaler(WorkerScaler):
    """Scales a connected client's ``.cluster`` (any Dask deployment backend) by one worker.

    Such a cluster starts workers of its own one kind: a GPU stage is only helped when that kind is
    GPU-tagged. Workers that joined after a ``scale`` call here count as added. :meth:`remove`
    retires exactly the worker it is given: through ``scale_down`` on a ``SpecCluster`` (and the
    backends built on it, such as dask-jobqueue's), else through the scheduler's ``retire_workers``.
    """

    START_TIMEOUT = 120.0

    def __init__(self, client: Client, cluster: Any) -> None:
        self.client = client
        self.cluster = cluster
        self.addresses: set[str] = set()

    def _workers(self) -> dict[str, Any]:
        workers: dict[str, Any] = self.client.scheduler_info(n_workers=-1)["workers"]
        return workers

    async def add(self, gpu: bool) -> str:
        if gpu:
            raise DeploymentError(f"{type(self.cluster).__name__}.scale starts one kind of worker: no GPU-tagged one")

        def grow() -> str:
            before = set(self._workers())
            self.cluster.scale(len(before) + 1)
            self.client.wait_for_workers(len(before) + 1, timeout=self.START_TIMEOUT)
            new = sorted(set(self._workers()) - before)
            self.addresses.update(new)
            return ", ".join(new)

        return await asyncio.get_running_loop().run_in_executor(None, grow)

    async def remove(self, address: str) -> None:
        def shrink() -> None:
            if isinstance(self.cluster, SpecCluster):  # its workers go by name: scale_down takes names
                info = self._workers().get(address)
                if info is not None:
                    self.cluster.sync(self.cluster.scale_down, [info["name"]])
            else:
                self.client.retire_workers(workers=[address])

        await asyncio.get_running_loop().run_in_executor(None, shrink)
        self.addresses.discard(address)

    def added(self, address: str) -> bool:
        return address in self.addresses


class SpecScaler(ScaleScaler):
    """Adds workers to a :class:`LocalCluster` as new ``SpecCluster`` worker specs of the needed
    kind (the same options as the first ones); gives back exactly the worker asked for."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(cluster.client, cluster.cluster)
        self.local = cluster

    async def add(self, gpu: bool) -> str:
        spec: SpecCluster = self.cluster
        index = next(self.local._next[gpu])
        name = f"{'gpu' if gpu else 'cpu'}-{index}"
        worker_spec = self.local._spec(gpu, index)

        async def start() -> str:
            spec.worker_spec[name] = worker_spec
            spec.scale(len(spec.worker_spec))  # starts the specs that have no worker yet
            await spec  # until every worker of the spec is up
            worker = spec.workers[name]
            return str(getattr(worker, "worker_address", None) or worker.address)

        address = await asyncio.get_running_loop().run_in_executor(None, functools.partial(spec.sync, start))
        self.addresses.add(address)
        return f"{name} at {address}"


def connect(target: str | Client, security: Security | None = None, timeout: float = CONNECT_TIMEOUT) -> Cluster:
    """The cloudflow interface over an existing Dask cluster.

    ``target`` is a scheduler address (a client is created with ``security``, the cluster's Dask
    ``Security`` for a ``tls://`` address, and closed by ``close()``) or a synchronous
    ``distributed.Client`` (never closed here; it brings its own security). A scheduler that does
    not answer within ``timeout`` seconds raises ``DeploymentError`` naming the address.

    Examples
    --------
    >>> cluster = cf.connect("tcp://scheduler:8786")   # doctest: +SKIP
    """
    if isinstance(target, Client):
        if security is not None:
            raise DeploymentError("connect: security= applies to a scheduler address; a Client brings its own")
        return Cluster(target, own_client=False)
    if isinstance(target, str):
        try:
            client = Client(target, security=security, timeout=timeout)
        except ValueError as exc:
            raise DeploymentError(
                f"connect: {target!r} is not a scheduler address ({exc}); expected e.g. 'tcp://host:8786'"
            ) from None
        except OSError as exc:  # refused, unreachable or timed out (distributed raises OSError for all)
            raise DeploymentError(
                f"connect: no Dask scheduler answered at {target!r} within {timeout:g} s "
                f"({type(exc).__name__}: {exc}); check that `dask scheduler` runs there, that the host "
                "and port are right and reachable from here, and that a tls:// address gets security="
            ) from None
        try:
            return Cluster(client, own_client=True)
        except BaseException:
            client.close()
            raise
    raise DeploymentError(f"connect: expected a scheduler address or a distributed.Client, got {type(target).__name__}")


def _cuda_devices() -> list[str]:
    """The CUDA devices this process may hand out (none on machines without an NVIDIA driver)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    return sorted(p.removeprefix("/dev/nvidia") for p in glob.glob("/dev/nvidia[0-9]*"))
