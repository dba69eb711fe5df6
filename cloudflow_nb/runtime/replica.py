"""The worker side: warm stage replicas behind comm handlers installed by a worker plugin.

:class:`CloudflowWorker` is registered once per cluster and set up on every worker (also on
workers that join later). It installs the store's handlers and these:

- ``cf_start`` builds a :class:`Replica` of a stage (class-based operators and their models load
  here, once, in the replica's own thread) and ``cf_stop`` drops it; ``cf_drop_deployment`` drops
  every replica of a deployment (the scheduler's registry calls it when the deployment's lease ran
  out or it was closed by name);
- ``cf_call`` runs one request's inputs through a replica, returning the output inline or keeping
  it on this worker as a reference; ``cf_fetch``/``cf_release`` serve and free those outputs;
- ``cf_cancel`` drops queued calls of requests that no longer need them (race losers);
- ``cf_health`` tells the controller, per replica, the calls it holds and how long its running
  batch has run; ``cf_drain`` takes an unhealthy replica out of service (its queued calls go back to
  the router, which sends them elsewhere);
- ``cf_fast`` starts (once) a :class:`~cloudflow_nb.runtime.fastpath.FastServer` on the worker's
  own event loop serving ``cf_call``, ``cf_cancel`` and ``cf_release`` (over TLS on a ``tls://``
  cluster), and returns its port and the secret its handshake asks for (``None`` on other
  schemes): routers send requests there, Dask comms stay the control plane.

User code runs in each replica's own thread, fed by a :class:`~cloudflow_nb.runtime.batcher.Batcher`
queue. One exception saves two thread hops per call: a replica whose last ``INLINE_AFTER`` batches
each took under ``INLINE_BUDGET`` (a filter, a lookup, a cheap transform) runs its batches on the
worker's event loop, and goes back to its thread the first time a batch takes longer.

A concurrent stage (``StageSpec.concurrent``: its maps are async or declared ``releases_gil``)
runs without a batching queue: each call starts at once, on the worker's event loop for a stage
that is one async map (no thread at all), else in a thread of its own, an async map's coroutine
then running on the event loop. Such a call ends as soon as it is cancelled (a
lost race) or its deadline passes: its coroutines get ``CancelledError`` and its slot is free at
once; sync code still running in its thread is left to finish there, and its result is dropped.
A replica keeps up to ``max_inflight`` such abandoned calls finishing beside the calls it holds;
past that a new call waits for a thread. An async map fused with plain sync code (a stage that is
not concurrent) runs in the replica's one thread with its coroutine on the loop, and is not
cancelled mid-call.

Admission: a replica holds at most ``StageSpec.max_inflight`` calls (running and queued); one more
is refused at once (``"overload"``), and a call that cannot finish before its deadline (by the
replica's average batch time) is never started (``"expired"``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distributed.comm.addressing import get_address_host
from distributed.diagnostics.plugin import WorkerPlugin

from cloudflow_nb.errors import FlowError
from cloudflow_nb.physical import Batching
from cloudflow_nb.plan import Map, Mark, Node, StageInput
from cloudflow_nb.runtime.admission import CONCURRENT_LIMIT, Ewma
from cloudflow_nb.runtime.batcher import Batcher, Run, WaitUntil
from cloudflow_nb.runtime.comm import worker_gone
from cloudflow_nb.runtime.device import gpu_device_name, using_device
from cloudflow_nb.runtime.fastpath import FastServer
from cloudflow_nb.runtime.health import ReplicaProbe
from cloudflow_nb.runtime.local import LocalEngine
from cloudflow_nb.runtime.store import WorkerStoreView, WorkerValues, reads_store, store_key
from cloudflow_nb.runtime.wire import INLINE_LIMIT, decode_table, encode_table, pack_error, table_nbytes
from cloudflow_nb.table import Table
from cloudflow_nb.traversal import walk

if TYPE_CHECKING:
    from distributed import Worker

__all__ = ["CloudflowWorker", "Replica", "StageSpec"]

# Outputs kept for a next stage are freed by the router; this sweeps what a vanished router left.
RESULT_TTL = 120.0
INLINE_BUDGET = 0.0002  # seconds: a batch this cheap may run on the worker's event loop
INLINE_AFTER = 20  # consecutive cheap batches before a replica runs inline
CANCEL_TTL = 60.0  # seconds a cancelled request is remembered, in case its call arrives after the cancel

# What a call ends with when it never ran: the router's reading of each is in router.py.
CANCELLED = "cancelled"  # its request no longer needs it (a race was lost)
EXPIRED = "expired"  # its deadline passed before it could start
OVERLOADED = "overload"  # the replica already held max_inflight calls
DRAINED = "drained"  # the replica was taken out of service: send the call elsewhere


@dataclass(frozen=True)
class StageSpec:
    """What a worker needs to serve a stage: its name, program, batching, device class, the
    most calls one replica may hold at once (``None``: no limit) and whether it runs its calls
    concurrently (async or ``releases_gil`` maps)."""

    name: str
    program: Node
    batching: Batching | None = None
    gpu: bool = False
    max_inflight: int | None = None
    concurrent: bool = False

    @property
    def slots(self) -> list[StageInput]:
        """The program's input slots, in slot order."""
        return sorted((n for n in walk(self.program) if isinstance(n, StageInput)), key=lambda n: n.slot)


@dataclass(eq=False)
class _Call:
    request: str
    bindings: dict[Node, Table]
    deadline: float
    future: asyncio.Future[Any] = field(repr=False)
    started: float = 0.0
    coroutines: list[concurrent.futures.Future[Any] | asyncio.Future[Any]] = field(default_factory=list, repr=False)


class Replica:
    """One warm replica of a stage on this worker: an engine, a thread and a batching queue.

    Event-driven: an arrival, a batch finishing or the batching timer polls the
    :class:`~cloudflow_nb.runtime.batcher.Batcher` and does what it says.
    """

    def __init__(self, spec: StageSpec, device: str, store: WorkerStoreView) -> None:
        self.spec = spec
        self.device = device
        self.slots = spec.slots
        self.marks = [n.column for n in walk(spec.program) if isinstance(n, Mark)]  # hoisted filters' verdicts
        self.engine = LocalEngine(store=store, run_coroutine=self._await)
        self._alone = spec.concurrent and spec.batching is None  # each call on its own
        self._direct = _one_async_map(spec.program) if self._alone else None  # ... on the loop
        limit = spec.max_inflight or CONCURRENT_LIMIT
        threads = 2 * limit if self._alone else 1  # the calls held, and as many abandoned ones
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix=f"cf-{spec.name}")
        self._running: set[_Call] = set()  # a concurrent stage's calls running now
        self._thread = threading.local()  # the call a pool thread is running (concurrent stages)
        self._loop: asyncio.AbstractEventLoop | None = None
        b = spec.batching
        self.batcher = Batcher(b.max_batch_size, b.max_batch_wait_ms / 1000, adapt=True) if b else Batcher()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._cheap_runs = 0  # consecutive batches under INLINE_BUDGET
        # a remote store read or a coroutine (run on this loop) would block the loop
        self._may_inline = not reads_store(spec.program) and not _has_async(spec.program)
        self._cancelled: dict[str, float] = {}  # request -> when it was cancelled (oldest first)
        self.active = 0  # calls held: running or queued
        self._batch_started: float | None = None  # loop time the running batch started
        self.batch_time = Ewma()  # seconds a batch takes
        self._draining = False

    async def start(self) -> None:
        """Build the stage's class-based operators in the replica's own thread."""
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(self.executor, self._warm_up)

    def _warm_up(self) -> None:
        with using_device(self.device):
            self.engine.warm_up(self.spec.program)

    async def call(self, request: str, inputs: Sequence[Table], timeout: float) -> tuple[Table | FlowError | str, int]:
        """Queue one request's inputs; its result or error and the size of the batch it ran in, or
        why it never ran (:data:`CANCELLED`, :data:`EXPIRED`, :data:`OVERLOADED`, :data:`DRAINED`)."""
        if request in self._cancelled:  # the cancel overtook the call
            return CANCELLED, 0
        if self._draining:
            return DRAINED, 0
        if timeout <= 0:
            return EXPIRED, 0
        limit = self.spec.max_inflight
        if limit is not None and self.active >= limit:
            return OVERLOADED, 0
        loop = asyncio.get_running_loop()
        now = loop.time()
        item = _Call(request, dict(zip(self.slots, inputs, strict=True)), now + timeout, loop.create_future())
        if self._alone:
            return await self._run_alone(item)
        if self._cheap_runs >= INLINE_AFTER and not self.batcher.busy and not len(self.batcher):
            return self._run_batch([item])[0], 1  # cheap and idle: no queue, no thread, no extra loop turn
        self.active += 1
        try:
            self.batcher.add(item, now)
            self._pump()
            return await item.future
        finally:
            self.active -= 1

    async def _run_alone(self, item: _Call) -> tuple[Table | FlowError | str, int]:
        """A concurrent stage's call: started at once in a pool thread, ended by its answer, a
        cancel or its deadline, whichever comes first."""
        loop = asyncio.get_running_loop()
        item.started = loop.time()
        self.active += 1
        self._running.add(item)
        job: asyncio.Future[Table | FlowError]
        if self._direct is not None:
            job = asyncio.ensure_future(self._run_direct(self._direct, item))
            item.coroutines.append(job)
        else:
            job = loop.run_in_executor(self.executor, self._run_one, item)
        job.add_done_callback(lambda j: self._answered(item, j))
        timer = loop.call_at(item.deadline, self._end, item, EXPIRED)
        try:
            return await item.future
        finally:
            timer.cancel()
            self._free(item)

    def _free(self, item: _Call) -> None:
        """A concurrent call no longer holds its slot (once): freed the moment it ends, before its
        awaiting task resumes, so a call arriving right behind a cancel finds the room."""
        if item in self._running:
            self._running.discard(item)
            self.active -= 1

    async def _run_direct(self, node: Map, item: _Call) -> Table | FlowError:
        (table,) = item.bindings.values()
        with using_device(self.device):
            try:
                return await self.engine.map_async(node, table)
            except FlowError as exc:
                return exc

    def _run_one(self, item: _Call) -> Table | FlowError:
        self._thread.call = item
        try:
            return self._run_batch([item])[0]
        finally:
            self._thread.call = None

    def _answered(self, item: _Call, job: asyncio.Future[Table | FlowError]) -> None:
        if item.future.done():  # it was cancelled or expired: its result goes nowhere
            if not job.cancelled():
                job.exception()
            return
        if job.cancelled() or job.exception() is not None:
            item.future.set_result((CANCELLED, 0))
        else:
            item.future.set_result((job.result(), 1))

    def _end(self, item: _Call, why: str) -> None:
        """Stop waiting for a running call: it ends with ``why`` now, its coroutines are cancelled,
        and sync code still running is left to finish in its thread."""
        if not item.future.done():
            item.future.set_result((why, 0))
        self._free(item)
        for coroutine in list(item.coroutines):
            coroutine.cancel()

    def _await(self, coro: Any) -> Any:
        """Run an async map's coroutine on the worker's loop, from a replica thread, to its result;
        a concurrent stage's call can cancel it there."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        item = getattr(self._thread, "call", None)
        if item is not None:
            item.coroutines.append(future)
            if item.future.done():  # ended while this coroutine was being sent
                future.cancel()
        return future.result()

    def probe(self) -> ReplicaProbe:
        """Calls held, and seconds the running batch (or oldest concurrent call) has run (0 when idle)."""
        started = self._batch_started
        if self._running:
            started = min(c.started for c in self._running)
        running_for = 0.0 if started is None else asyncio.get_running_loop().time() - started
        return ReplicaProbe(self.active, running_for)

    def drain(self) -> None:
        """Take no more calls; queued ones end with :data:`DRAINED` (the router sends them elsewhere)."""
        self._draining = True
        self._drop(lambda c: True, DRAINED)

    def cancel(self, requests: set[str]) -> None:
        """Drop queued calls of these requests, and their calls that arrive later."""
        now = time.monotonic()
        while self._cancelled and now - next(iter(self._cancelled.values())) > CANCEL_TTL:
            del self._cancelled[next(iter(self._cancelled))]
        self._cancelled.update(dict.fromkeys(requests, now))
        self._drop(lambda c: c.request in requests)
        for item in [c for c in self._running if c.request in requests]:
            self._end(item, CANCELLED)

    def _drop(self, predicate: Any, why: str = CANCELLED) -> None:
        for item in self.batcher.drop(predicate):
            if not item.future.done():
                item.future.set_result((why, 0))

    def _pump(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._drop(lambda c: c.future.done())
        late = now + self.batch_time.value
        self._drop(lambda c: c.deadline <= late, EXPIRED)
        action = self.batcher.poll(now)
        if isinstance(action, Run):
            self._batch_started = now
        if isinstance(action, Run) and self._cheap_runs >= INLINE_AFTER:
            outcomes, took = self._timed_batch(action.items)
            loop.call_soon(self._deliver, action.items, outcomes, took)
        elif isinstance(action, Run):
            job = loop.run_in_executor(self.executor, self._timed_batch, action.items)
            job.add_done_callback(lambda j: self._finished(action.items, j))
        elif isinstance(action, WaitUntil):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(action.deadline, self._pump)

    def _finished(self, items: list[_Call], job: asyncio.Future[tuple[list[Table | FlowError], float | None]]) -> None:
        if job.cancelled():
            self._deliver(items, [CANCELLED] * len(items), None)
        else:
            self._deliver(items, *job.result())

    def _deliver(self, items: list[_Call], outcomes: list[Any], took: float | None) -> None:
        self.batcher.finished(took)
        self._batch_started = None
        for item, outcome in zip(items, outcomes, strict=True):
            if not item.future.done():
                item.future.set_result((outcome, len(items)))
        self._pump()

    def _run_batch(self, items: list[_Call]) -> list[Table | FlowError]:
        return self._timed_batch(items)[0]

    def _timed_batch(self, items: list[_Call]) -> tuple[list[Table | FlowError], float | None]:
        """The batch's outcomes and the seconds it took (``None`` when every call failed: no measure
        of its cost)."""
        start = time.perf_counter()
        with using_device(self.device):
            try:
                outcomes = self.engine.run_many(self.spec.program, [c.bindings for c in items])
            except Exception as exc:  # an engine failure, not a user error: fail the whole batch
                error = FlowError(f"stage {self.spec.name!r} failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                outcomes = [error] * len(items)
        took = time.perf_counter() - start
        self.batch_time.add(took)
        cheap = self._may_inline and took < INLINE_BUDGET
        self._cheap_runs = self._cheap_runs + 1 if cheap else 0
        return outcomes, None if all(isinstance(o, FlowError) for o in outcomes) else took

    def close(self) -> None:
        """Stop serving; queued calls are cancelled, a running batch finishes in its thread."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._drop(lambda c: True)
        for item in list(self._running):
            self._end(item, CANCELLED)
        self.executor.shutdown(wait=False, cancel_futures=True)


class CloudflowWorker(WorkerPlugin):
    """Worker plugin: the store's values, the stage replicas and their comm handlers."""

    name = "cloudflow"
    idempotent = True

    def setup(self, worker: Worker) -> None:
        self.worker = worker
        self.values = WorkerValues()
        self.values.install(worker)
        self.view = WorkerStoreView(worker, self.values)
        self.replicas: dict[str, Replica] = {}
        self.results: dict[str, tuple[Table, float]] = {}
        self._last_sweep = time.monotonic()
        tls = worker.address.startswith("tls://")
        self.fast = FastServer(
            {"cf_call": self.call, "cf_cancel": self.cancel, "cf_release": self.release},
            get_address_host(worker.address),
            ssl=worker.security.get_listen_args("worker").get("ssl_context") if tls else None,
        )
        worker.handlers.update(
            {
                "cf_start": self.start,
                "cf_stop": self.stop,
                "cf_drop_deployment": self.drop_deployment,
                "cf_call": self.call,
                "cf_fetch": self.fetch,
                "cf_release": self.release,
                "cf_cancel": self.cancel,
                "cf_fast": self.fast_port,
                "cf_health": self.health,
                "cf_drain": self.drain,
            }
        )

    def teardown(self, worker: Worker) -> None:
        self.fast.close()
        for replica in self.replicas.values():
            replica.close()
        self.replicas.clear()
        self.results.clear()

    async def start(self, replica: str, spec: StageSpec) -> dict[str, Any]:
        """Build and warm a replica; ``{"status": "ok", "device": ...}`` or the build error."""
        device = gpu_device_name() if spec.gpu else "cpu"
        rep = Replica(spec, device, self.view)
        try:
            await rep.start()
        except FlowError as exc:
            rep.close()
            return {"status": "error", **pack_error(exc)}
        self.replicas[replica] = rep
        return {"status": "ok", "device": device}

    async def fast_port(self) -> dict[str, Any] | None:
        """``{"port": ..., "key": ...}``: this worker's fast request server (started on first use)
        and the secret a caller proves in its handshake; ``None`` when the worker is on neither
        ``tcp://`` nor ``tls://`` with a TLS context (its requests stay on Dask comms)."""
        scheme = self.worker.address.partition("://")[0]
        if scheme not in ("tcp", "tls") or (scheme == "tls" and self.fast.ssl is None):
            return None
        return {"port": await self.fast.start(), "key": self.fast.key}

    def stop(self, replicas: list[str]) -> None:
        """Drop replicas (unknown ids are ignored)."""
        for rid in replicas:
            rep = self.replicas.pop(rid, None)
            if rep is not None:
                rep.close()

    def drop_deployment(self, deployment: str) -> int:
        """Drop every replica of ``deployment`` (ids start with its name and a ``/``); how many."""
        ids = [rid for rid in self.replicas if rid.startswith(f"{deployment}/")]
        self.stop(ids)
        return len(ids)

    async def call(
        self, replica: str, request: str, inputs: list[Any], timeout: float, keep: bool, peek: list[str]
    ) -> dict[str, Any]:
        """Run a request through a replica.

        ``inputs`` holds, per slot, ``["inline", rows]`` or ``["ref", worker, key]``. With
        ``keep``, an output over ``INLINE_LIMIT`` stays here and a reference goes back. ``peek``
        names columns whose first-row values the router wants (for locality routing); a kept
        output's ``kept`` names the hoisted filters' columns that keep a row. A replica
        whose batch size adapts says in ``batch_cost`` what a batch costs per item as a fraction
        of a single call (``None`` until it has measured both).
        """
        self._sweep()
        rep = self.replicas.get(replica)
        if rep is None:
            return {"status": "no-replica"}
        tables = await self._resolve(rep, inputs)
        if tables is None:
            return {"status": "lost-input"}
        outcome, batch = await rep.call(request, tables, timeout)
        if isinstance(outcome, str):
            return {"status": outcome}
        if isinstance(outcome, FlowError):
            return {"status": "error", "batch": batch, **pack_error(outcome)}
        reply: dict[str, Any] = {"status": "ok", "batch": batch, "peek": _peek(outcome, peek)}
        if rep.batcher.sizer is not None:  # an adaptive batch size: its measure, for dep.stats()
            reply["batch_cost"] = rep.batcher.sizer.ratio
        nbytes = table_nbytes(outcome)
        if keep and nbytes > INLINE_LIMIT:
            key = f"{request}/{uuid.uuid4().hex}"
            self.results[key] = (outcome, time.monotonic())
            reply["ref"] = [self.worker.address, key, nbytes]
            if rep.marks:  # which hoisted filters kept a row: the router skips the others' branches
                reply["kept"] = [c for c in rep.marks if any(row[c] for row in outcome)]
        else:
            reply["rows"] = encode_table(outcome)
        return reply

    async def _resolve(self, rep: Replica, inputs: list[Any]) -> list[Table] | None:
        tables = []
        for slot, spec in zip(rep.slots, inputs, strict=True):
            if spec[0] == "inline":
                tables.append(decode_table(slot.schema, spec[1]))
                continue
            _, owner, key = spec
            if owner == self.worker.address:
                entry = self.results.get(key)
                if entry is None:
                    return None
                tables.append(entry[0])
                continue
            try:
                reply = await self.worker.rpc(owner).cf_fetch(key=key)
            except Exception as exc:  # its worker is gone or stuck: the request starts again
                if worker_gone(exc) or isinstance(exc, TimeoutError):
                    return None
                raise
            if not reply["found"]:
                return None
            tables.append(decode_table(slot.schema, reply["rows"]))
        return tables

    def fetch(self, key: str) -> dict[str, Any]:
        """A kept output, for the next stage's worker (its rows as :func:`encode_table` sends them:
        arrays and tensors out of band)."""
        entry = self.results.get(key)
        if entry is None:
            return {"found": False}
        return {"found": True, "rows": encode_table(entry[0])}

    def release(self, keys: list[str]) -> None:
        """Free kept outputs."""
        for key in keys:
            self.results.pop(key, None)

    def cancel(self, replica: str, requests: list[str]) -> None:
        """Drop a replica's queued calls for these requests."""
        rep = self.replicas.get(replica)
        if rep is not None:
            rep.cancel(set(requests))

    def health(self, replicas: list[str]) -> dict[str, tuple[int, float]]:
        """``(calls held, seconds its batch has run)`` of each of these replicas this worker knows."""
        out = {}
        for rid in replicas:
            rep = self.replicas.get(rid)
            if rep is not None:
                probe = rep.probe()
                out[rid] = (probe.active, probe.running_for)
        return out

    def drain(self, replicas: list[str]) -> None:
        """Take replicas out of service: they refuse new calls and hand back their queued ones."""
        for rid in replicas:
            rep = self.replicas.get(rid)
            if rep is not None:
                rep.drain()

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < 1.0:
            return
        self._last_sweep = now
        for key in [k for k, (_, t) in self.results.items() if now - t > RESULT_TTL]:
            del self.results[key]


def _has_async(program: Node) -> bool:
    return any(isinstance(n, Map) and n.is_async for n in walk(program))


def _one_async_map(program: Node) -> Map | None:
    """The program's map when it is one unbatched async map over its input slot."""
    if isinstance(program, Map) and program.is_async and not program.batching:
        return program if isinstance(program.child, StageInput) else None
    return None


def _peek(table: Table, columns: list[str]) -> dict[str, Any]:
    if not columns or len(table) == 0:
        return {}
    first = table[0]
    out = {}
    for col in columns:
        try:
            out[col] = store_key(first[col])
        except (KeyError, FlowError):
            continue
    return out
