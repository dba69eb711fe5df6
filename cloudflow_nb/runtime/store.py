"""The key-value store on the workers: replicated values in worker memory, a directory on the scheduler.

Three parts, one per process kind:

- :class:`StoreDirectory` (a scheduler plugin) maps each key to its holders: distinct workers,
  untagged ones first, fewest keys first (the rule lives in
  :mod:`~cloudflow_nb.runtime.replication`). Each value is kept on ``replicas`` workers (dask
  config ``cloudflow.store.replicas``, default 2; ``cluster.store.replicas`` reads and sets it),
  or on every worker when there are fewer. When a holder leaves, or a worker joins while keys are
  short of copies, the directory picks new holders and tells a surviving holder to push its copy
  to each of them, worker to worker.
- :class:`WorkerValues` holds one worker's copies and answers put/get/delete/copy over Dask comms.
- :class:`Store` is the client's dict-like view (``cluster.store``); :class:`WorkerStoreView` is the
  read-only view a replica's engine uses: local copies are read in place, others are fetched from
  their holders directly.

Reads try the holders in turn: a holder that is gone, or that answers "not found" (a copy still on
its way), is skipped and the next copy is read, within the read's deadline. A key whose every copy
is gone reads as missing (a lookup raises ``cf.MissingKeyError``).

Consistency: every write gets a version from the directory and goes to every holder; a holder
keeps the newest version it has seen, so copies converge to the last write placed, whatever order
the writes and re-replication copies arrive in. A write succeeds when at least one holder stored
it; holders it could not reach are unlisted and re-filled from a stored copy. A read may still see
the previous value on one copy while a write is on its way to it. One fault between two copies
is survived; a write that reached only a holder still being filled when the last complete copy
died is lost with it.

Keys are ``str`` or ``int``. Values live for the life of the cluster, or until deleted or every
copy is gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
from dask.sizeof import sizeof
from distributed.core import send_recv
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol.serialize import to_serialize

from cloudflow_nb.errors import FlowError, FlowTimeoutError, SchemaError
from cloudflow_nb.plan import Lookup, Node
from cloudflow_nb.runtime import replication
from cloudflow_nb.runtime.comm import worker_gone
from cloudflow_nb.runtime.placement import WorkerInfo
from cloudflow_nb.runtime.replication import Copy
from cloudflow_nb.runtime.supervise import Supervisor
from cloudflow_nb.traversal import walk

if TYPE_CHECKING:
    from distributed import Scheduler, Worker
    from distributed.core import ConnectionPool

    from cloudflow_nb.runtime.loop import LoopThread

__all__ = ["Store", "StoreDirectory", "WorkerStoreView", "WorkerValues", "reads_store", "store_key"]

STORE_TIMEOUT = 30.0  # seconds a store operation may take, every copy tried
CONNECT_TIMEOUT = 3.0  # seconds to reach a holder: a dead one is skipped after this, not Dask's 30 s
LOCATION_TTL = 1.0
DEFAULT_REPLICAS = 2
REPAIR_INTERVAL = 1.0  # seconds between re-replication rounds (sooner when a worker leaves or joins)
COPY_TIMEOUT = 60.0  # seconds one holder may take to push its copies to a new holder
COPY_CHUNK = 32 * 2**20  # bytes of values per message when a holder pushes copies


def store_key(key: Any) -> str | int:
    """``key`` as the store holds it (numpy integers become ``int``); anything else is an error."""
    if isinstance(key, np.integer):
        return int(key)
    if isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool)):
        return key
    raise SchemaError(f"store keys must be str or int, got {type(key).__name__} {key!r}")


def reads_store(program: Node) -> bool:
    """Whether a stage's program contains a lookup (and so may wait on a remote store read)."""
    return any(isinstance(node, Lookup) for node in walk(program))


def replicas_setting(value: Any) -> int:
    """A replication factor, checked: an ``int`` of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SchemaError(f"store replicas must be an int >= 1, got {value!r}")
    return value


class StoreDirectory(SchedulerPlugin):
    """Scheduler plugin: the holders of each store key, kept at the replication factor."""

    name = "cloudflow-store"
    idempotent = True

    def __init__(self) -> None:
        self.holders: dict[Any, list[str]] = {}
        self.held: dict[str, set[Any]] = {}  # worker -> the keys it holds
        self.filling: set[tuple[Any, str]] = set()  # (key, new holder) whose copy is on its way
        self.replicas = DEFAULT_REPLICAS
        self.version = 0
        self.scheduler: Scheduler | None = None

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.replicas = replicas_setting(dask.config.get("cloudflow.store.replicas", DEFAULT_REPLICAS))
        self._dirty = False
        self._wake = asyncio.Event()
        self._supervisor = Supervisor("store directory")
        self._supervisor.loop("store-repair", self._repair, REPAIR_INTERVAL, self._wake)
        scheduler.handlers.update(
            {
                "cf_store_where": self.locate,
                "cf_store_place": self.place,
                "cf_store_forget": self.forget,
                "cf_store_unlist": self.unlist,
                "cf_store_keys": self.keys,
                "cf_store_replicas": self.set_replicas,
            }
        )

    async def close(self) -> None:
        await self._supervisor.close()

    # -- handlers -------------------------------------------------------------------------------

    def locate(self, keys: list[Any]) -> list[list[str]]:
        """The holders of each key, complete copies first (``[]``: not in the store)."""
        return [self._listed(key) for key in keys]

    def place(self, keys: list[Any]) -> list[tuple[list[str], int]]:
        """The holders of each key being written (chosen for new keys; ``[]``: no workers) and
        the write's version."""
        chosen = replication.place(keys, self.holders, self._workers(), self.replicas, self._load())
        out = []
        for key in keys:
            for holder in chosen[key]:
                self._add(key, holder)
            self.version += 1
            out.append((self.holders.get(key, []), self.version))
        return out

    def forget(self, keys: list[Any] | None = None) -> list[tuple[Any, list[str]]]:
        """Drop keys (all keys when ``None``); ``(key, former holders)`` pairs."""
        dropped = []
        for key in list(self.holders) if keys is None else keys:
            listed = list(self.holders.get(key, []))
            for holder in listed:
                self._remove(key, holder)
            dropped.append((key, listed))
        return dropped

    def unlist(self, pairs: list[tuple[Any, str]]) -> None:
        """Holders a write could not reach: no longer listed; their keys are filled again."""
        for key, holder in pairs:
            self._remove(key, holder)
        self._changed()

    def keys(self) -> list[Any]:
        """Every key, in insertion order."""
        return list(self.holders)

    def set_replicas(self, n: int | None = None) -> int:
        """The replication factor, set first when ``n`` is given (more copies are made at once;
        fewer keep the existing ones until their holders leave)."""
        if n is not None:
            self.replicas = replicas_setting(n)
            self._changed()
        return self.replicas

    # -- membership -----------------------------------------------------------------------------

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        self._changed()

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        for key in list(self.held.get(worker, ())):
            self._remove(key, worker)
        self.held.pop(worker, None)
        self._changed()

    # -- re-replication -------------------------------------------------------------------------

    async def _repair(self) -> None:
        """One round: plan the copies that restore the replication factor, and make them."""
        if not self._dirty:
            return
        self._dirty = False
        copies = replication.plan_repairs(self.holders, self.filling, self._workers(), self.replicas, self._load())
        for copy in copies:
            for key in copy.keys:
                self._add(key, copy.target)
                self.filling.add((key, copy.target))
        results = await asyncio.gather(*(self._copy(c) for c in copies), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not worker_gone(result):
                raise result

    async def _copy(self, copy: Copy) -> None:
        assert self.scheduler is not None
        copied: list[Any] = []
        try:
            copied = await asyncio.wait_for(
                self.scheduler.rpc(copy.source).cf_store_copy(keys=list(copy.keys), target=copy.target), COPY_TIMEOUT
            )
        finally:
            self._settle(copy, set(copied))

    def _settle(self, copy: Copy, copied: set[Any]) -> None:
        """After a copy: unlist the target where it failed (tried again next round), and drop
        copies that arrived for keys deleted meanwhile."""
        stale = []
        for key in copy.keys:
            self.filling.discard((key, copy.target))
            if key not in copied:
                self._remove(key, copy.target)
                self._dirty = True
            elif copy.target not in self.holders.get(key, ()):
                stale.append(key)
        if stale:
            self._supervisor.spawn("store-cleanup", self._delete(copy.target, stale))

    async def _delete(self, worker: str, keys: list[Any]) -> None:
        assert self.scheduler is not None
        try:
            await self.scheduler.rpc(worker).cf_store_delete(keys=keys)
        except Exception as exc:
            if not worker_gone(exc):
                raise

    # -- bookkeeping ----------------------------------------------------------------------------

    def _changed(self) -> None:
        self._dirty = True
        self._wake.set()

    def _listed(self, key: Any) -> list[str]:
        listed = self.holders.get(key, [])
        return [h for h in listed if (key, h) not in self.filling] + [h for h in listed if (key, h) in self.filling]

    def _add(self, key: Any, holder: str) -> None:
        listed = self.holders.setdefault(key, [])
        if holder not in listed:
            listed.append(holder)
            self.held.setdefault(holder, set()).add(key)

    def _remove(self, key: Any, holder: str) -> None:
        listed = self.holders.get(key)
        if listed is None or holder not in listed:
            return
        listed.remove(holder)
        self.held.get(holder, set()).discard(key)
        self.filling.discard((key, holder))
        if not listed:
            del self.holders[key]

    def _workers(self) -> list[WorkerInfo]:
        assert self.scheduler is not None
        return [WorkerInfo(a, bool(ws.resources.get("GPU"))) for a, ws in self.scheduler.workers.items()]

    def _load(self) -> dict[str, int]:
        return {worker: len(keys) for worker, keys in self.held.items()}


class WorkerValues:
    """One worker's store copies (each with its write's version), served over Dask comms."""

    def __init__(self) -> None:
        self.values: dict[Any, Any] = {}
        self.versions: dict[Any, int] = {}

    def install(self, worker: Worker) -> None:
        """Register the comm handlers on ``worker``."""
        self._worker = worker
        worker.handlers.update(
            {
                "cf_store_put": self.put,
                "cf_store_get": self.get,
                "cf_store_delete": self.delete,
                "cf_store_copy": self.copy,
            }
        )

    def put(self, items: list[tuple[Any, int, Any]]) -> None:
        """Store ``(key, version, value)`` triples; an older version than the one held is ignored."""
        for key, version, value in items:
            if version >= self.versions.get(key, -1):
                self.values[key] = value
                self.versions[key] = version

    def get(self, keys: list[Any]) -> list[tuple[bool, Any]]:
        """``(found, value)`` per key."""
        return [(k in self.values, to_serialize(self.values.get(k))) for k in keys]

    def delete(self, keys: list[Any]) -> None:
        """Drop keys (missing ones are ignored)."""
        for key in keys:
            self.values.pop(key, None)
            self.versions.pop(key, None)

    async def copy(self, keys: list[Any], target: str) -> list[Any]:
        """Push this worker's copies of ``keys`` to ``target`` (in messages of about
        ``COPY_CHUNK`` bytes); the keys pushed (those held here)."""
        held = [k for k in keys if k in self.values]
        chunk: list[tuple[Any, int, Any]] = []
        size = 0
        for i, key in enumerate(held):
            chunk.append((key, self.versions[key], to_serialize(self.values[key])))
            size += sizeof(self.values[key])
            if size >= COPY_CHUNK or i == len(held) - 1:
                await self._worker.rpc(target).cf_store_put(items=chunk)
                chunk, size = [], 0
        return held


async def _ask(pool: ConnectionPool, address: str, op: str, **kwargs: Any) -> Any:
    """Call ``op`` on ``address``; a peer that cannot be reached fails within ``CONNECT_TIMEOUT``."""
    comm = await pool.connect(address, timeout=CONNECT_TIMEOUT)
    try:
        return await send_recv(comm=comm, op=op, **kwargs)
    finally:
        pool.reuse(address, comm)


async def read_copies(
    pool: ConnectionPool, scheduler: Any, key: Any, timeout: float, skip: str = ""
) -> tuple[bool, Any]:
    """``(found, value)`` of ``key``, trying its holders in turn.

    A holder that is gone or has no copy (yet) is skipped; each holder gets an equal share of
    what is left of ``timeout``. When every listed holder fails, the directory is asked once more
    (a holder may have been added meanwhile). ``skip`` is a holder not to ask (the caller itself).
    Raises ``FlowTimeoutError`` when no copy was found and some holder ran out of time.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    tried = {skip}
    slow = False
    for _ in range(2):
        try:
            (listed,) = await asyncio.wait_for(scheduler.cf_store_where(keys=[key]), max(deadline - loop.time(), 0))
        except TimeoutError:
            raise FlowTimeoutError(
                f"store: the directory did not answer for key {key!r} within {timeout:g} s"
            ) from None
        fresh = [h for h in listed if h not in tried]
        if not fresh:
            break
        for i, holder in enumerate(fresh):
            tried.add(holder)
            share = (deadline - loop.time()) / (len(fresh) - i)
            try:
                ((found, value),) = await asyncio.wait_for(_ask(pool, holder, "cf_store_get", keys=[key]), share)
            except TimeoutError:  # alive but slow: the next copy may answer in time
                slow = True
                continue
            except Exception as exc:
                if worker_gone(exc):
                    continue
                raise
            if found:
                return True, value
    if slow:
        raise FlowTimeoutError(f"store: no copy of key {key!r} answered within {timeout:g} s")
    return False, None


class WorkerStoreView(Mapping[Any, Any]):
    """The store as a replica reads it: in place when a copy is local, else from a holder.

    Called from replica threads; remote reads run on the worker's event loop, so they must never
    be made from that loop's own thread (they would block the loop they wait for): that raises.
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
        found, value = self._call(
            read_copies(self._worker.rpc, self._worker.scheduler, key, STORE_TIMEOUT, skip=self._worker.address)
        )
        if not found:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[Any]:
        return iter(self._call(self._worker.scheduler.cf_store_keys()))

    def __len__(self) -> int:
        return len(self._call(self._worker.scheduler.cf_store_keys()))

    def _call(self, coro: Any) -> Any:
        loop = self._worker.loop.asyncio_loop  # type: ignore[attr-defined]
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise FlowError("store: a remote read was made on the worker's event loop, which it would block")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(STORE_TIMEOUT + 1)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise FlowTimeoutError(f"store: no answer within {STORE_TIMEOUT:g} s") from None


class Store(MutableMapping[Any, Any]):
    """``cluster.store``: a dict-like key-value store whose values live, replicated, in worker memory.

    Examples
    --------
    >>> cluster.store["user:7"] = vector            # doctest: +SKIP
    >>> cluster.store.locations("user:7")          # doctest: +SKIP
    ['tcp://127.0.0.1:40123', 'tcp://127.0.0.1:40125']
    >>> cluster.store.replicas = 3                  # doctest: +SKIP
    """

    def __init__(self, loop: LoopThread, scheduler_address: str) -> None:
        self._loop = loop
        self._scheduler = scheduler_address
        self._locations: dict[Any, tuple[str, float]] = {}

    # -- dict interface -------------------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        found, value = self._run(read_copies(self._loop.pool, self._rpc(), store_key(key), STORE_TIMEOUT))
        if not found:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.update({key: value})

    def __delitem__(self, key: Any) -> None:
        (holders,) = self._run(self._forget([store_key(key)]))
        if not holders:
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
        """Store many values at once (one message per holder)."""
        items = dict(other.items() if isinstance(other, Mapping) else other, **kwargs)
        if items:
            self._run(self._put({store_key(k): v for k, v in items.items()}))

    def clear(self) -> None:
        """Remove every key."""
        self._run(self._forget(None))

    def location(self, key: Any) -> str | None:
        """The address of a worker holding ``key`` (the first live holder), or ``None``."""
        return self._run(self.locate(key, cached=False))

    def locations(self, key: Any) -> list[str]:
        """The addresses of every worker holding ``key`` (complete copies first); ``[]`` if none."""
        (holders,) = self._run(self._rpc().cf_store_where(keys=[store_key(key)]))
        return list(holders)

    @property
    def replicas(self) -> int:
        """How many workers keep a copy of each value (dask config ``cloudflow.store.replicas``).

        Setting it makes the missing copies at once; lowering it keeps existing copies until
        their holders leave.
        """
        return int(self._run(self._rpc().cf_store_replicas()))

    @replicas.setter
    def replicas(self, n: int) -> None:
        self._run(self._rpc().cf_store_replicas(n=replicas_setting(n)))

    def __repr__(self) -> str:
        return f"<cf.Store on {self._scheduler}>"

    # -- async core (runs on the loop thread) ---------------------------------------------------

    async def locate(self, key: Any, cached: bool = True) -> str | None:
        """A live holder of ``key``; with ``cached``, a holder seen in the last second will do."""
        try:
            key = store_key(key)
        except SchemaError:
            return None
        now = time.monotonic()
        hit = self._locations.get(key)
        if cached and hit is not None and now - hit[1] < LOCATION_TTL:
            return hit[0]
        (holders,) = await self._rpc().cf_store_where(keys=[key])
        if not holders:
            self._locations.pop(key, None)
            return None
        self._locations[key] = (holders[0], now)
        return holders[0]

    async def _put(self, items: dict[Any, Any]) -> None:
        """Write to every holder; a key is stored once one holder has it. Holders that cannot be
        reached are unlisted and the keys they missed placed again (once)."""
        pending = list(items)
        for _ in range(2):
            placed = await self._rpc().cf_store_place(keys=pending)
            if any(not holders for holders, _ in placed):
                raise SchemaError("store: the cluster has no workers to hold values")
            by_holder: dict[str, list[tuple[Any, int]]] = {}
            for key, (holders, version) in zip(pending, placed, strict=True):
                for holder in holders:
                    by_holder.setdefault(holder, []).append((key, version))
            results = await asyncio.gather(
                *(
                    _ask(
                        self._loop.pool, holder, "cf_store_put", items=[(k, v, to_serialize(items[k])) for k, v in kvs]
                    )
                    for holder, kvs in by_holder.items()
                ),
                return_exceptions=True,
            )
            stored: set[Any] = set()
            missed: list[tuple[Any, str]] = []
            for (holder, kvs), result in zip(by_holder.items(), results, strict=True):
                if not isinstance(result, BaseException):
                    stored.update(k for k, _ in kvs)
                elif worker_gone(result):
                    missed.extend((k, holder) for k, _ in kvs)
                else:
                    raise result
            if missed:
                await self._rpc().cf_store_unlist(pairs=missed)
            pending = [k for k in pending if k not in stored]
            if not pending:
                return
        raise FlowError(f"store: no worker could store key {pending[0]!r} (every holder is gone)")

    async def _forget(self, keys: list[Any] | None) -> list[list[str]]:
        dropped = await self._rpc().cf_store_forget(keys=keys)
        by_holder: dict[str, list[Any]] = {}
        for key, holders in dropped:
            self._locations.pop(key, None)
            for holder in holders:
                by_holder.setdefault(holder, []).append(key)
        results = await asyncio.gather(
            *(_ask(self._loop.pool, holder, "cf_store_delete", keys=ks) for holder, ks in by_holder.items()),
            return_exceptions=True,
        )
        for result in results:  # a dead holder took its copies along: nothing left to delete
            if isinstance(result, BaseException) and not worker_gone(result):
                raise result
        return [holders for _, holders in dropped]

    def _rpc(self) -> Any:
        return self._loop.pool(self._scheduler)

    def _run(self, coro: Any) -> Any:
        try:
            return self._loop.run(coro, timeout=STORE_TIMEOUT + 1)
        except concurrent.futures.TimeoutError:
            raise FlowTimeoutError(f"store: no answer from the cluster within {STORE_TIMEOUT:g} s") from None
