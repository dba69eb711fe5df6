"""The key-value store on the workers: values in worker memory, a directory on the scheduler.

Three parts, one per process kind:

- :class:`StoreDirectory` (a scheduler plugin) maps each key to the worker that holds it, picks an
  owner for new keys (untagged workers first, fewest keys first) and forgets a worker's keys when
  it leaves.
- :class:`WorkerValues` holds one worker's values and answers put/get/delete over Dask comms.
- :class:`Store` is the client's dict-like view (``cluster.store``); :class:`WorkerStoreView` is the
  read-only view a replica's engine uses: local keys are read in place, others are fetched from
  their owner worker directly.

Keys are ``str`` or ``int``. Values live for the life of the cluster, or until deleted or their
worker dies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import numpy as np
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol.serialize import to_serialize

from cloudflow_nb.errors import FlowTimeoutError, SchemaError

if TYPE_CHECKING:
    from distributed import Scheduler, Worker

    from cloudflow_nb.runtime.loop import LoopThread

__all__ = ["Store", "StoreDirectory", "WorkerStoreView", "WorkerValues", "store_key"]

STORE_TIMEOUT = 30.0
LOCATION_TTL = 1.0


def store_key(key: Any) -> str | int:
    """``key`` as the store holds it (numpy integers become ``int``); anything else is an error."""
    if isinstance(key, np.integer):
        return int(key)
    if isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool)):
        return key
    raise SchemaError(f"store keys must be str or int, got {type(key).__name__} {key!r}")


class StoreDirectory(SchedulerPlugin):
    """Scheduler plugin: which worker holds each store key."""

    name = "cloudflow-store"
    idempotent = True

    def __init__(self) -> None:
        self.where: dict[Any, str] = {}
        self.counts: dict[str, int] = {}
        self.scheduler: Scheduler | None = None

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        scheduler.handlers.update(
            {
                "cf_store_where": self.locate,
                "cf_store_place": self.place,
                "cf_store_forget": self.forget,
                "cf_store_keys": self.keys,
            }
        )

    def locate(self, keys: list[Any]) -> list[str | None]:
        """The owner of each key, or ``None``."""
        return [self.where.get(k) for k in keys]

    def place(self, keys: list[Any]) -> list[str | None]:
        """The owner of each key, choosing one for new keys (``None``: no workers)."""
        owners = []
        for key in keys:
            owner = self.where.get(key)
            if owner is None or owner not in self._workers():
                owner = self._choose()
                if owner is not None:
                    self._assign(key, owner)
            owners.append(owner)
        return owners

    def forget(self, keys: list[Any] | None = None) -> list[tuple[Any, str | None]]:
        """Drop keys (all keys when ``None``); ``(key, former owner)`` pairs."""
        dropped = []
        for key in list(self.where) if keys is None else keys:
            owner = self.where.pop(key, None)
            if owner is not None:
                self.counts[owner] -= 1
            dropped.append((key, owner))
        return dropped

    def keys(self) -> list[Any]:
        """Every key, in insertion order."""
        return list(self.where)

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        lost = [k for k, w in self.where.items() if w == worker]
        for key in lost:
            del self.where[key]
        self.counts.pop(worker, None)

    def _workers(self) -> dict[str, Any]:
        assert self.scheduler is not None
        return self.scheduler.workers

    def _choose(self) -> str | None:
        workers = self._workers()
        untagged = [a for a, ws in workers.items() if not ws.resources.get("GPU")]
        candidates = untagged or list(workers)
        if not candidates:
            return None
        return min(candidates, key=lambda a: (self.counts.get(a, 0), a))

    def _assign(self, key: Any, owner: str) -> None:
        old = self.where.get(key)
        if old is not None:
            self.counts[old] -= 1
        self.where[key] = owner
        self.counts[owner] = self.counts.get(owner, 0) + 1


class WorkerValues:
    """One worker's store values, served over Dask comms."""

    def __init__(self) -> None:
        self.values: dict[Any, Any] = {}

    def install(self, worker: Worker) -> None:
        """Register the comm handlers on ``worker``."""
        worker.handlers.update({"cf_store_put": self.put, "cf_store_get": self.get, "cf_store_delete": self.delete})

    def put(self, items: list[tuple[Any, Any]]) -> None:
        """Store ``(key, value)`` pairs."""
        for key, value in items:
            self.values[key] = value

    def get(self, keys: list[Any]) -> list[tuple[bool, Any]]:
        """``(found, value)`` per key."""
        return [(k in self.values, to_serialize(self.values.get(k))) for k in keys]

    def delete(self, keys: list[Any]) -> None:
        """Drop keys (missing ones are ignored)."""
        for key in keys:
            self.values.pop(key, None)


class WorkerStoreView(Mapping[Any, Any]):
    """The store as a replica reads it: in place when local, else fetched from the owner worker.

    Called from replica threads; remote reads run on the worker's event loop.
    """

    def __init__(self, worker: Worker, local: WorkerValues) -> None:
        self._worker = worker
        self._local = local

    def __getitem__(self, key: Any) -> Any:
        try:
            key = store_key(key)
        except SchemaError:
            raise KeyError(key) from None
        if key in self._local.values:
            return self._local.values[key]
        found, value = self._call(self._fetch(key))
        if not found:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[Any]:
        return iter(self._call(self._worker.scheduler.cf_store_keys()))

    def __len__(self) -> int:
        return len(self._call(self._worker.scheduler.cf_store_keys()))

    async def _fetch(self, key: Any) -> tuple[bool, Any]:
        (owner,) = await self._worker.scheduler.cf_store_where(keys=[key])
        if owner is None:
            return False, None
        ((found, value),) = await self._worker.rpc(owner).cf_store_get(keys=[key])
        return found, value

    def _call(self, coro: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._worker.loop.asyncio_loop)  # type: ignore[attr-defined]
        try:
            return future.result(STORE_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise FlowTimeoutError(f"store: no answer within {STORE_TIMEOUT:g} s") from None


class Store(MutableMapping[Any, Any]):
    """``cluster.store``: a dict-like key-value store whose values live in worker memory.

    Examples
    --------
    >>> cluster.store["user:7"] = vector            # doctest: +SKIP
    >>> cluster.store.location("user:7")           # doctest: +SKIP
    'tcp://127.0.0.1:40123'
    """

    def __init__(self, loop: LoopThread, scheduler_address: str) -> None:
        self._loop = loop
        self._scheduler = scheduler_address
        self._locations: dict[Any, tuple[str, float]] = {}

    # -- dict interface -------------------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        ((found, value),) = self._run(self._get([store_key(key)]))
        if not found:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.update({key: value})

    def __delitem__(self, key: Any) -> None:
        (owner,) = self._run(self._forget([store_key(key)]))
        if owner is None:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return self.location(key) is not None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._run(self._rpc().cf_store_keys()))

    def __len__(self) -> int:
        return len(self._run(self._rpc().cf_store_keys()))

    def set(self, key: Any, value: Any) -> None:
        """``store[key] = value``."""
        self[key] = value

    def delete(self, key: Any) -> None:
        """``del store[key]``."""
        del self[key]

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Store many values at once (one message per owner worker)."""
        items = dict(other.items() if isinstance(other, Mapping) else other, **kwargs)
        if items:
            self._run(self._put({store_key(k): v for k, v in items.items()}))

    def clear(self) -> None:
        """Remove every key."""
        self._run(self._forget(None))

    def location(self, key: Any) -> str | None:
        """The address of the worker holding ``key``, or ``None``."""
        return self._run(self.locate(key, cached=False))

    def __repr__(self) -> str:
        return f"<cf.Store on {self._scheduler}>"

    # -- async core (runs on the loop thread) ---------------------------------------------------

    async def locate(self, key: Any, cached: bool = True) -> str | None:
        """Where ``key`` lives; with ``cached``, a location seen in the last second will do."""
        try:
            key = store_key(key)
        except SchemaError:
            return None
        now = time.monotonic()
        hit = self._locations.get(key)
        if cached and hit is not None and now - hit[1] < LOCATION_TTL:
            return hit[0]
        (owner,) = await self._rpc().cf_store_where(keys=[key])
        if owner is None:
            self._locations.pop(key, None)
        else:
            self._locations[key] = (owner, now)
        return owner

    async def _put(self, items: dict[Any, Any]) -> None:
        keys = list(items)
        for attempt in range(2):
            owners = await self._rpc().cf_store_place(keys=keys)
            if None in owners:
                raise SchemaError("store: the cluster has no workers to hold values")
            by_owner: dict[str, list[Any]] = {}
            for key, owner in zip(keys, owners, strict=True):
                by_owner.setdefault(owner, []).append(key)
            try:
                await asyncio.gather(
                    *(
                        self._loop.pool(owner).cf_store_put(items=[(k, to_serialize(items[k])) for k in ks])
                        for owner, ks in by_owner.items()
                    )
                )
                return
            except OSError:  # an owner died between placing and storing: place again
                if attempt:
                    raise

    async def _get(self, keys: list[Any]) -> list[tuple[bool, Any]]:
        owners = await self._rpc().cf_store_where(keys=keys)
        out = []
        for key, owner in zip(keys, owners, strict=True):
            if owner is None:
                out.append((False, None))
            else:
                (found_value,) = await self._loop.pool(owner).cf_store_get(keys=[key])
                out.append(tuple(found_value))
        return out

    async def _forget(self, keys: list[Any] | None) -> list[str | None]:
        dropped = await self._rpc().cf_store_forget(keys=keys)
        by_owner: dict[str, list[Any]] = {}
        for key, owner in dropped:
            self._locations.pop(key, None)
            if owner is not None:
                by_owner.setdefault(owner, []).append(key)
        results = await asyncio.gather(
            *(self._loop.pool(owner).cf_store_delete(keys=ks) for owner, ks in by_owner.items()),
            return_exceptions=True,
        )
        for result in results:  # a dead owner took its values along: nothing left to delete
            if isinstance(result, BaseException) and not isinstance(result, OSError):
                raise result
        return [owner for _, owner in dropped]

    def _rpc(self) -> Any:
        return self._loop.pool(self._scheduler)

    def _run(self, coro: Any) -> Any:
        try:
            return self._loop.run(coro, timeout=STORE_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise FlowTimeoutError(f"store: no answer from the cluster within {STORE_TIMEOUT:g} s") from None
