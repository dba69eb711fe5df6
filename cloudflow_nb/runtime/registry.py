"""The scheduler's registry of deployments: who owns which replicas, and for how long.

Every deployment is registered under a name with its replicas (id, stage, worker, device) and an
opaque spec (the pickled flow, plan and timeout a later client needs to attach; the scheduler
stores these bytes and never unpickles them). One client at a time manages a deployment's
replicas (places, heals and scales them) under a lease it renews every ``lease / 3`` seconds:

- a deployment that is not detached lives as long as its lease: when its client stops renewing
  (it died, or lost the cluster) the registry forgets it and tells every worker to drop its
  replicas;
- a detached deployment (``cluster.deploy(flow, name=..., detached=True)``) lives until it is
  closed by name; when its manager's lease runs out, the next attached client that renews takes
  over managing, and the others follow the replica list kept here.

:class:`Deployments` holds these rules with no I/O and no clock (``now`` comes in);
:class:`Registry` is the scheduler plugin that serves them and drops expired deployments. It also
keeps Dask's adaptive scaling from retiring workers that host replicas
(``valid_workers_downscaling``; research/dask.md 2.8: ``cluster.adapt()`` sees no actor traffic).
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dask
from distributed.diagnostics.plugin import SchedulerPlugin

from cloudflow_nb.errors import DeploymentError
from cloudflow_nb.runtime.supervise import Supervisor

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler, WorkerState

__all__ = ["Deployments", "Entry", "Registry", "lease_seconds", "valid_name"]

DEFAULT_LEASE = 10.0  # seconds, unless dask config ``cloudflow.lease`` says otherwise
MIN_LEASE, MAX_LEASE = 0.1, 86400.0
MAX_SPEC_BYTES = 64 << 20  # a deployment's pickled flow and plan
MAX_REPLICAS = 100_000  # per deployment, as reported
CHECK_INTERVAL = 0.25  # seconds between looks for expired leases
DROP_TIMEOUT = 10.0  # seconds a worker has to drop a deployment's replicas
_NAME = re.compile(r"[^/\s][^/]{0,199}")


def lease_seconds() -> float:
    """The lease period from dask config ``cloudflow.lease`` (env ``DASK_CLOUDFLOW__LEASE``)."""
    value = dask.config.get("cloudflow.lease", DEFAULT_LEASE)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not MIN_LEASE <= seconds <= MAX_LEASE:
        raise DeploymentError(
            f"dask config 'cloudflow.lease' must be seconds between {MIN_LEASE:g} and {MAX_LEASE:g}, got {value!r}"
        )
    return seconds


def valid_name(name: object) -> str:
    """``name`` when it can name a deployment (1 to 200 characters, no ``/``), else ``DeploymentError``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DeploymentError(
            f"deployment name must be 1 to 200 characters without '/' and not starting with a space, got {name!r}"
        )
    return name


@dataclass
class Entry:
    """One registered deployment.

    ``replicas`` holds ``[id, stage, worker, device]`` lists as its manager last reported them;
    ``manager`` is the lease holder's token (``None`` when no client manages it) and ``expires``
    when its lease ends.
    """

    name: str
    detached: bool
    lease: float
    spec: bytes
    manager: str | None
    expires: float
    replicas: list[list[str]] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """What an attaching client needs: everything but the manager's token."""
        return {
            "name": self.name,
            "detached": self.detached,
            "lease": self.lease,
            "spec": self.spec,
            "replicas": self.replicas,
        }


class Deployments:
    """The registry's rules, without I/O: register, renew or take over leases, expire, forget.

    Examples
    --------
    >>> reg = Deployments()
    >>> _ = reg.register("cascade", "a", detached=True, lease=2.0, spec=b"", now=0.0)
    >>> reg.renew("cascade", "b", now=1.0)      # "a" still holds the lease
    'follower'
    >>> reg.renew("cascade", "b", now=2.5)      # it ran out: "b" takes over
    'manager'
    """

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def register(self, name: str, holder: str, detached: bool, lease: float, spec: bytes, now: float) -> Entry:
        """A new deployment managed by ``holder``; ``DeploymentError`` when the name is live or bad."""
        valid_name(name)
        if name in self.entries:
            raise DeploymentError(
                f"a deployment named {name!r} is already running "
                f"(close it with cluster.close_deployment({name!r}) or pick another name)"
            )
        if len(spec) > MAX_SPEC_BYTES:
            raise DeploymentError(f"deployment {name!r}: its pickled flow is {len(spec)} bytes, over {MAX_SPEC_BYTES}")
        lease = min(max(float(lease), MIN_LEASE), MAX_LEASE)
        entry = Entry(name, bool(detached), lease, bytes(spec), holder, now + lease)
        self.entries[name] = entry
        return entry

    def renew(self, name: str, holder: str, now: float, replicas: list[list[str]] | None = None) -> str | None:
        """``holder`` renews its lease or, when no live lease is held, takes it over.

        Returns ``"manager"`` (``replicas``, when given, become the deployment's list),
        ``"follower"`` (someone else manages it; ``replicas`` are ignored) or ``None`` when no such
        deployment is registered (it was closed, or dropped when its lease ran out).
        """
        entry = self.entries.get(name)
        if entry is None:
            return None
        if entry.manager not in (holder, None) and now < entry.expires:
            return "follower"
        entry.manager, entry.expires = holder, now + entry.lease
        if replicas is not None:
            if len(replicas) > MAX_REPLICAS:
                raise DeploymentError(f"deployment {name!r}: {len(replicas)} replicas reported, over {MAX_REPLICAS}")
            entry.replicas = [[str(part) for part in r[:4]] for r in replicas]
        return "manager"

    def release(self, name: str, holder: str) -> None:
        """``holder`` stops managing ``name`` (it detached): the next client that renews takes over."""
        entry = self.entries.get(name)
        if entry is not None and entry.manager == holder:
            entry.manager = None

    def remove(self, name: str) -> Entry | None:
        """Forget ``name``; its entry, if it was registered."""
        return self.entries.pop(name, None)

    def expire(self, now: float) -> list[Entry]:
        """Forget the deployments that are not detached and whose lease ran out; their entries."""
        gone = [e for e in self.entries.values() if not e.detached and now >= e.expires]
        for entry in gone:
            del self.entries[entry.name]
        return gone

    def worker_removed(self, address: str) -> None:
        """A worker left the cluster: its replicas are gone."""
        for entry in self.entries.values():
            entry.replicas = [r for r in entry.replicas if r[2] != address]

    def hosted(self) -> dict[str, int]:
        """Replicas per worker over every deployment."""
        total: dict[str, int] = {}
        for entry in self.entries.values():
            for r in entry.replicas:
                total[r[2]] = total.get(r[2], 0) + 1
        return total

    def names(self) -> list[str]:
        """The registered deployments' names, sorted."""
        return sorted(self.entries)

    def placements(self) -> dict[str, list[list[str]]]:
        """Every deployment's replicas as last reported (``[id, stage, worker, device]`` lists).

        Examples
        --------
        >>> reg = Deployments()
        >>> _ = reg.register("d", "a", detached=False, lease=2.0, spec=b"", now=0.0)
        >>> _ = reg.renew("d", "a", now=1.0, replicas=[["r0", "s0", "tcp://w:1", "cpu"]])
        >>> reg.placements()
        {'d': [['r0', 's0', 'tcp://w:1', 'cpu']]}
        """
        return {name: [list(r) for r in self.entries[name].replicas] for name in self.names()}


class Registry(SchedulerPlugin):
    """Scheduler plugin serving :class:`Deployments` as comm handlers, and dropping expired ones.

    Handlers (all answer plain data, never pickles): ``cf_register``, ``cf_lease`` (renew, take
    over, report replicas; the role, the replica list and every worker's replica count),
    ``cf_release``, ``cf_deployments``, ``cf_deployment``, ``cf_replicas`` (every deployment's
    replicas, for the cluster's notebook view) and ``cf_close_deployment``. A
    deployment forgotten here is dropped on every worker through their ``cf_drop_deployment``.
    """

    name = "cloudflow-registry"
    idempotent = True

    def __init__(self) -> None:
        self.deployments = Deployments()
        self.drops = 0  # deployments dropped because their lease ran out

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.supervisor = Supervisor("cloudflow registry")
        scheduler.handlers.update(
            {
                "cf_register": self.register,
                "cf_lease": self.lease,
                "cf_release": self.release,
                "cf_deployments": self.names,
                "cf_deployment": self.describe,
                "cf_replicas": self.replicas,
                "cf_close_deployment": self.close_deployment,
            }
        )
        self.supervisor.loop("expire", self._expire, CHECK_INTERVAL)

    async def close(self) -> None:
        await self.supervisor.close()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def register(self, name: str, holder: str, detached: bool, lease: float, spec: bytes) -> dict[str, Any]:
        """Register a deployment; ``{"status": "ok"}`` or ``{"status": "error", "message": ...}``."""
        try:
            self.deployments.register(name, holder, detached, lease, spec, self._now())
        except DeploymentError as exc:
            return {"status": "error", "message": str(exc)}
        return {"status": "ok"}

    def lease(self, name: str, holder: str, replicas: list[list[str]] | None = None) -> dict[str, Any]:
        """Renew (or take over) ``name``'s lease; the role, the replica list and the hosted counts."""
        try:
            role = self.deployments.renew(name, holder, self._now(), replicas)
        except DeploymentError as exc:
            return {"status": "error", "message": str(exc)}
        if role is None:
            return {"status": "gone"}
        entry = self.deployments.entries[name]
        return {"status": "ok", "role": role, "replicas": entry.replicas, "hosted": self.deployments.hosted()}

    def release(self, name: str, holder: str) -> None:
        """``holder`` detached from ``name``."""
        self.deployments.release(name, holder)

    def names(self) -> list[str]:
        """The registered deployments."""
        return self.deployments.names()

    def replicas(self) -> dict[str, list[list[str]]]:
        """Every deployment's replicas (deployment name -> ``[id, stage, worker, device]`` lists)."""
        return self.deployments.placements()

    def describe(self, name: str) -> dict[str, Any] | None:
        """``name``'s spec and replicas, or ``None``."""
        entry = self.deployments.entries.get(name)
        return None if entry is None else entry.info()

    async def close_deployment(self, name: str) -> bool:
        """Forget ``name`` and drop its replicas everywhere; whether it was registered."""
        entry = self.deployments.remove(name)
        await self._drop(name)
        return entry is not None

    async def _expire(self) -> None:
        for entry in self.deployments.expire(self._now()):
            self.drops += 1
            self.supervisor.spawn(f"drop {entry.name}", self._drop(entry.name))

    async def _drop(self, name: str) -> None:
        """Every worker drops the replicas of ``name`` (also those never reported)."""
        calls = [
            asyncio.wait_for(self.scheduler.rpc(address).cf_drop_deployment(deployment=name), DROP_TIMEOUT)
            for address in list(self.scheduler.workers)
        ]
        await asyncio.gather(*calls, return_exceptions=True)

    def valid_workers_downscaling(self, scheduler: Scheduler, workers: list[WorkerState]) -> list[WorkerState]:
        hosted = self.deployments.hosted()
        return [ws for ws in workers if ws.address not in hosted]

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        self.deployments.worker_removed(worker)
