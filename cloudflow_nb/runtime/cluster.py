"""Clusters to serve on: an embedded ``LocalCluster`` with GPU-tagged workers, or ``connect()``.

A :class:`Cluster` wraps a synchronous ``distributed.Client``. On first use of a Dask cluster it
registers cloudflow's scheduler plugin (the store directory) and worker plugin (store values and
stage replicas; it also sets up workers that join later). Requests and store traffic then go from
this process's own loop thread straight to the workers.
"""

from __future__ import annotations

import glob
import html
import logging
import os
from typing import TYPE_CHECKING, Any

import dask
from distributed import Client, Nanny, Scheduler, SpecCluster, Worker

from cloudflow_nb.errors import DeploymentError
from cloudflow_nb.runtime.controller import list_workers
from cloudflow_nb.runtime.deployment import DEFAULT_TIMEOUT, Deployment
from cloudflow_nb.runtime.loop import LoopThread
from cloudflow_nb.runtime.replica import CloudflowWorker
from cloudflow_nb.runtime.routing import WorkerInfo
from cloudflow_nb.runtime.store import Store, StoreDirectory

if TYPE_CHECKING:
    from cloudflow_nb.flow import Flow
    from cloudflow_nb.optimize.options import Optimize

__all__ = ["Cluster", "LocalCluster", "connect"]

# A task asking for a resource no worker has fails after this instead of waiting forever.
NO_WORKERS_TIMEOUT = "30s"
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
        client.register_plugin(CloudflowWorker())
        self._loop = LoopThread(client.connection_args)
        self.scheduler_address: str = client.scheduler.address
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

    def deploy(self, flow: Flow, optimize: bool | Optimize = True, timeout: float = DEFAULT_TIMEOUT) -> Deployment:
        """Optimize ``flow``, start warm replicas of each stage on suitable workers, and serve it.

        Parameters
        ----------
        flow : cf.Flow
            What to serve.
        optimize : bool or cf.Optimize
            ``True``: the default rewrites, ``False``: none, or the options to use.
        timeout : float
            The default deadline of each request, in seconds.
        """
        plan = flow.optimize(optimize)
        dep = Deployment(flow, plan, self._loop, self.scheduler_address, self.store, timeout).start()
        self._deployments.append(dep)
        return dep

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

    def _repr_html_(self) -> str:
        try:
            workers = self.workers()
            gpu = sum(w.gpu for w in workers)
            rows = f"{len(workers)} workers ({gpu} GPU-tagged)"
        except Exception:
            rows = "workers unavailable"
        link = self.dashboard_link
        dash = f'<a href="{html.escape(link)}" target="_blank">dashboard</a>' if link else "no dashboard"
        return (
            f"<div><b>cf.{type(self).__name__}</b> at <code>{html.escape(self.scheduler_address)}</code>: "
            f"{rows}; {dash}</div>"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/html": self._repr_html_(), "text/plain": repr(self)}


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
    ) -> None:
        if workers < 0 or gpu_workers < 0 or workers + gpu_workers == 0:
            raise DeploymentError(
                f"LocalCluster: needs at least one worker (workers={workers!r}, gpu_workers={gpu_workers!r})"
            )
        threads = compute_threads or max(1, (os.cpu_count() or 1) // (workers + gpu_workers))
        devices = _cuda_devices()
        specs = {}
        for i in range(workers + gpu_workers):
            gpu = i >= workers
            env = dict.fromkeys(_THREAD_VARS, str(threads))
            if gpu and devices:
                env["CUDA_VISIBLE_DEVICES"] = devices[(i - workers) % len(devices)]
            options: dict[str, Any] = {"nthreads": threads_per_worker, "host": "127.0.0.1"}
            if gpu:
                options["resources"] = {"GPU": 1}
            if processes:
                options.update(env=env, silence_logs=logging.ERROR)
            name = f"gpu-{i - workers}" if gpu else f"cpu-{i}"
            specs[name] = {"cls": Nanny if processes else Worker, "options": options}
        scheduler = {
            "cls": Scheduler,
            "options": {"host": "127.0.0.1", "port": 0, "dashboard": dashboard, "dashboard_address": ":0"},
        }
        # The nannies' default pre-spawn environment trims malloc aggressively (slow for models)
        # and writes its variables into this process too; thread counts go per worker instead.
        config: dict[str, str | None] = {"distributed.scheduler.no-workers-timeout": NO_WORKERS_TIMEOUT}
        for var in ("MALLOC_TRIM_THRESHOLD_", *_THREAD_VARS):
            config[f"distributed.nanny.pre-spawn-environ.{var}"] = None
        with dask.config.set(config):
            self.cluster = SpecCluster(workers=specs, scheduler=scheduler, silence_logs=logging.ERROR, name="cloudflow")
        try:
            super().__init__(Client(self.cluster), own_client=True)
        except BaseException:
            self.cluster.close()
            raise

    def close(self) -> None:
        """Close deployments, the client and the cluster."""
        try:
            super().close()
        finally:
            self.cluster.close()


def connect(target: str | Client) -> Cluster:
    """The cloudflow interface over an existing Dask cluster.

    ``target`` is a scheduler address (a client is created, and closed by ``close()``) or a
    synchronous ``distributed.Client`` (never closed here).

    Examples
    --------
    >>> cluster = cf.connect("tcp://scheduler:8786")   # doctest: +SKIP
    """
    if isinstance(target, Client):
        return Cluster(target, own_client=False)
    if isinstance(target, str):
        client = Client(target)
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
