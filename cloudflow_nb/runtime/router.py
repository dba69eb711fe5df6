"""The router: runs each request's stage graph from the client, calling replicas directly.

For one request it starts every stage as soon as its inputs are ready, sends each call straight to
a replica's worker (over its fast connection, :mod:`~cloudflow_nb.runtime.fastpath`, else Dask
comms; the scheduler never sees a request), and meets the results:

- a stage call goes to the least busy replica, or to the replica on the worker holding the store
  key of a locality stage; a competitive stage races replicas (on distinct workers unless the
  stage is concurrent: async or ``releases_gil``), and cancels the losers once one answers, while
  its :class:`~cloudflow_nb.runtime.racepolicy.RacePolicy` finds that racing pays, else sends
  each call to one replica (racing now and then to see whether it pays again);
- a hedged stage sends a second copy of a call to another replica when the first has not
  answered within the :class:`~cloudflow_nb.runtime.hedging.HedgePolicy`'s threshold;
- admission: a replica holds at most ``StageRuntime.limit`` calls; when no replica of a stage has
  room the call waits in the stage's queue (first come, first served) of at most
  ``StageRuntime.max_queue`` calls, and when that is full too the request fails at once with an
  ``OverloadError``: no queue grows without bound. A call is never sent once its deadline has
  passed, and one that expires while queued leaves the queue;
- a call counts as in flight on its replica until the replica answers, even when its request gave
  up earlier (a deadline, a lost race): a busy replica is never mistaken for an idle one;
- a call lost with its worker, or handed back by a replica being drained, is retried on another
  replica (waiting for a re-placed one when none is left); a request whose kept intermediate output
  died with its worker starts again;
- ``anyof`` stages run here and take the first input that arrives; gathered stages (the joins
  and unions that end a flow, :mod:`~cloudflow_nb.optimize.gathering`) run here on all inputs;
- a stage whose inputs all came back empty, and whose operators make nothing of nothing (maps,
  filters, explodes, lookups, joins, unions: :func:`empty_in_empty_out`), answers an empty table
  here without a call: the branch a filter left without rows costs no hop; a branch whose filter
  was hoisted into the stage that feeds it gets only the rows it keeps (:func:`selections`);
- the whole request has one deadline.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloudflow_nb.errors import DeploymentError, FlowError, FlowTimeoutError, OverloadError
from cloudflow_nb.physical import SOURCE, Plan, Stage
from cloudflow_nb.plan import AnyOf, Explode, Filter, Join, Lookup, Map, Mark, Node, Select, StageInput, Union
from cloudflow_nb.runtime.admission import Ewma, default_limit, expected_wait, in_time, retry_after, with_room
from cloudflow_nb.runtime.comm import worker_gone
from cloudflow_nb.runtime.fastpath import fast_pool
from cloudflow_nb.runtime.hedging import HedgePolicy
from cloudflow_nb.runtime.local import LocalEngine
from cloudflow_nb.runtime.racepolicy import RacePolicy
from cloudflow_nb.runtime.racing import AllLost, Keep, Race, Win
from cloudflow_nb.runtime.routing import ReplicaRef, choose_racers, choose_replica
from cloudflow_nb.runtime.stats import Recorder
from cloudflow_nb.runtime.wire import Ref, decode_table, encode_table, table_nbytes, unpack_error
from cloudflow_nb.table import Table
from cloudflow_nb.traversal import consumers, rewrite, walk

if TYPE_CHECKING:
    from distributed.core import ConnectionPool

    from cloudflow_nb.runtime.controller import Controller
    from cloudflow_nb.runtime.store import Store

__all__ = ["Output", "Router", "StageRuntime", "stage_runtimes"]

MAX_ATTEMPTS = 3
DEFAULT_QUEUE = 100  # calls per stage that may wait for a replica with room
# bytes: a call moving more inline data than this goes over Dask comms, whose out-of-band buffers
# beat the fast path's pickled frames for arrays of megabytes
BULKY = 1 << 20


@dataclass
class Output:
    """A stage's output for one request: a table here, or a reference to one kept on a worker."""

    table: Table | None = None
    ref: Ref | None = None
    peek: dict[str, Any] = field(default_factory=dict)
    kept: frozenset[str] | None = None  # of a kept table, the hoisted filters' columns keeping a row

    def first(self, column: str) -> Any:
        """The first row's value of ``column``, when known here."""
        if self.table is not None:
            if column in self.table.schema and len(self.table):
                return self.table[0][column]
            return None
        return self.peek.get(column)

    def wire(self) -> list[Any]:
        """How a replica receives it: ``["inline", rows]`` or ``["ref", worker, key]``."""
        if self.ref is not None:
            return ["ref", self.ref.worker, self.ref.key]
        assert self.table is not None
        return ["inline", encode_table(self.table)]


@dataclass
class StageRuntime:
    """A deployed stage: its live replicas, their load and its figures."""

    stage: Stage
    keep: bool = False
    peek: list[str] = field(default_factory=list)
    limit: int = 4  # calls one replica may hold at once (admission control)
    max_queue: int = DEFAULT_QUEUE  # calls that may wait here for a replica with room
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)
    latency: Ewma = field(default_factory=Ewma)  # of calls, as the router sees them
    replicas: list[ReplicaRef] = field(default_factory=list)
    draining: set[ReplicaRef] = field(default_factory=set)
    devices: dict[ReplicaRef, str] = field(default_factory=dict)
    inflight: dict[ReplicaRef, int] = field(default_factory=dict)
    answered: Counter[ReplicaRef] = field(default_factory=Counter)
    batch_costs: dict[ReplicaRef, float | None] = field(default_factory=dict)  # adaptive batching's measure
    stats: Recorder = field(default_factory=Recorder)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    turn: int = 0
    bulky: bool = False  # its last inline output was over BULKY bytes
    hedge: HedgePolicy | None = None  # when the stage hedges its calls
    race: RacePolicy | None = None  # when the stage races its calls
    replica_seconds: float = 0.0  # calls' time on replicas, from send to answer (losers' too)
    skips_empty: bool = False  # empty inputs make an empty output, answered without a call
    first_ready: bool = False  # an in-router ``anyof``: runs on the first input that arrives
    selects: dict[int, tuple[str, ...]] = field(default_factory=dict)  # see :func:`selections`
    slots: list[StageInput] = field(default_factory=list)  # the program's input slots, in slot order

    def add(self, replica: ReplicaRef, device: str) -> None:
        """A new live replica."""
        self.replicas.append(replica)
        self.devices[replica] = device
        self.changed.set()
        for _ in range(min(self.limit, len(self.waiting))):
            self.wake()

    def wake(self) -> None:
        """Let the first queued call try again (a replica may have room)."""
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def remove(self, replica: ReplicaRef) -> None:
        """A replica is gone (calls still in flight on it keep counting until they end)."""
        if replica in self.replicas:
            self.replicas.remove(replica)
        self.devices.pop(replica, None)
        self.batch_costs.pop(replica, None)
        self.draining.discard(replica)
        if not self.inflight.get(replica):
            self.inflight.pop(replica, None)

    def drain(self, replica: ReplicaRef) -> None:
        """Stop routing calls to ``replica`` (unhealthy); it stays known until it is stopped."""
        if replica in self.devices:
            self.replicas.remove(replica)
            self.draining.add(replica)

    def ended(self, replica: ReplicaRef) -> None:
        """A call on ``replica`` ended (answered, refused or lost)."""
        left = self.inflight.get(replica, 0) - 1
        if left > 0 or (left == 0 and (replica in self.devices)):
            self.inflight[replica] = left
        else:
            self.inflight.pop(replica, None)
        self.wake()


def stage_runtimes(
    plan: Plan, max_inflight: int | None = None, max_queue: int = DEFAULT_QUEUE
) -> dict[str, StageRuntime]:
    """A runtime record per stage; outputs read by a remote stage only may stay on their worker,
    a stage reports the first-row values its readers route by, each replica holds at most
    ``max_inflight`` calls (default: :func:`~cloudflow_nb.runtime.admission.default_limit`) and at
    most ``max_queue`` more wait here for room."""
    readers: dict[str, list[Stage]] = {s.name: [] for s in plan.stages}
    for stage in plan.stages:
        for name in stage.inputs:
            if name != SOURCE:
                readers[name].append(stage)
    out = {}
    for stage in plan.stages:
        keep = stage is not plan.output and not any(r.in_router for r in readers[stage.name])
        peek = sorted({r.locality for r in readers[stage.name] if r.locality})
        limit = default_limit(stage) if max_inflight is None else max_inflight
        out[stage.name] = srt = StageRuntime(stage, keep, peek, limit, max_queue)
        srt.skips_empty = empty_in_empty_out(stage.program)
        srt.first_ready = any(isinstance(n, AnyOf) for n in walk(stage.program))
        srt.selects = selections(stage.program)
        srt.slots = stage.slots
        if stage.hedge_after is not None:
            srt.hedge = HedgePolicy(stage.hedge_after)
        elif stage.competitive:
            srt.race = RacePolicy(stage.replicas)
    return out


_ROW_WISE = (StageInput, Map, Filter, Mark, Select, Explode, Lookup, Join, Union)


def empty_in_empty_out(program: Node) -> bool:
    """Whether ``program`` gives no rows from inputs without rows: it is made only of operators that
    work row by row (maps, filters, explodes, lookups) or combine their inputs' rows (joins,
    unions); an aggregation may make a row of nothing, and ``anyof`` runs in the router anyway.

    Examples
    --------
    >>> import cloudflow_nb as cf
    >>> flow = cf.Flow("f", x=int).filter(lambda r: r["x"] > 0).map(lambda r: r["x"], names=["y"])
    >>> empty_in_empty_out(flow.optimize(cf.Optimize()).stages[0].program)
    True
    """
    return all(isinstance(node, _ROW_WISE) for node in walk(program))


def selections(program: Node) -> dict[int, tuple[str, ...]]:
    """Input slots read only through hoisted filters' ``Select`` steps, with their columns: the
    router sends such a slot only the rows one of them keeps (so a branch left without rows is
    skipped); the replica selects again, and drops the columns."""
    readers = consumers(program)
    out = {}
    for node in walk(program):
        if isinstance(node, StageInput):
            above = readers[id(node)]
            if above and all(isinstance(r, Select) for r in above):
                out[node.slot] = tuple(r.column for r in above)  # type: ignore[attr-defined]
    return out


def _selected(out: Output, columns: tuple[str, ...] | None, slot: StageInput) -> Output:
    """``out`` with only the rows that one of ``columns`` keeps: selected here when it is here, no
    rows when it is kept on a worker and its replica said none of them keeps a row."""
    if columns is None:
        return out
    table = out.table
    if table is None:
        kept = out.kept is not None and any(c in out.kept for c in columns)
        return out if out.kept is None or kept else Output(Table(slot.schema))
    return Output(Table(table.schema, [row for row in table if any(row[c] for c in columns)]), None, out.peek)


class _Lost:
    """A call that will never answer (its replica or worker is gone, or it was drained)."""


class _Full:
    """A call the replica refused: it already held as many calls as it may."""


LOST = _Lost()
FULL = _Full()


class _InputLost(Exception):
    """An intermediate output kept on a worker died with it: the request must start again."""


class Router:
    """Serves requests of one deployed plan; all methods run on the deployment's loop."""

    def __init__(
        self, plan: Plan, stages: dict[str, StageRuntime], pool: ConnectionPool, store: Store, controller: Controller
    ) -> None:
        self.plan = plan
        self.stages = stages
        self.pool = pool
        self.fast = fast_pool(pool)
        self.store = store
        self.controller = controller
        self.requests = Recorder()
        self._engine = LocalEngine()
        self._background: set[asyncio.Task[Any]] = set()
        self._running: set[asyncio.Task[Any]] = set()  # requests being served
        self._closing = False
        self._chain = all(
            not s.in_router and s.inputs == ((SOURCE,) if i == 0 else (plan.stages[i - 1].name,))
            for i, s in enumerate(plan.stages)
        )

    # -- one request ----------------------------------------------------------------------------

    async def predict(self, table: Table, timeout: float) -> Table:
        """The plan's output for ``table``, or its ``FlowError``, within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeout
        pending: set[str] = set()
        ok = False
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            for _ in range(MAX_ATTEMPTS):
                try:
                    result = await _within(self._attempt(table, deadline, pending), deadline - loop.time())
                except _InputLost:
                    self.requests.retries += 1
                    continue
                ok = True
                return result
            raise FlowError(
                f"flow {self.plan.name!r}: request failed {MAX_ATTEMPTS} times because workers holding "
                "its intermediate results died"
            )
        except OverloadError:
            self.requests.rejected += 1
            raise
        except FlowError:
            raise
        except asyncio.CancelledError:
            if self._closing:
                raise DeploymentError(
                    f"flow {self.plan.name!r}: the deployment closed before the request finished"
                ) from None
            raise
        except asyncio.TimeoutError:
            waiting = ", ".join(repr(n) for n in sorted(pending)) or "none"
            raise FlowTimeoutError(
                f"flow {self.plan.name!r}: request did not finish within {timeout:g} s "
                f"(stages still running: {waiting})"
            ) from None
        finally:
            self._running.discard(task)  # type: ignore[arg-type]
            self.requests.record(loop.time() - start, ok)

    async def close(self) -> None:
        """End every request still being served with a ``DeploymentError``."""
        self._closing = True
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _attempt(self, table: Table, deadline: float, pending: set[str]) -> Table:
        if not self.plan.stages:  # a source-only flow returns its request
            return table
        rid = uuid.uuid4().hex
        refs: list[Ref] = []
        source = Output(table=table)
        if self._chain:  # one stage after the other: no task per stage
            out = source
            try:
                for stage in self.plan.stages:
                    pending.clear()
                    pending.add(stage.name)
                    out = await self._stage(stage, rid, source, {}, deadline, refs, [out])
            finally:
                self._release(refs)
            assert out.table is not None
            return out.table
        tasks: dict[str, asyncio.Task[Output]] = {}
        for stage in self.plan.stages:
            task = asyncio.ensure_future(self._stage(stage, rid, source, tasks, deadline, refs))
            task.add_done_callback(_retrieve)
            task.add_done_callback(functools.partial(_finished_stage, pending, stage.name))
            tasks[stage.name] = task
        pending.clear()
        pending.update(tasks)
        try:
            out = await tasks[self.plan.output.name]
        finally:
            for task in tasks.values():
                task.cancel()
            self._release(refs)
        assert out.table is not None
        return out.table

    async def _stage(
        self,
        stage: Stage,
        rid: str,
        source: Output,
        tasks: dict[str, asyncio.Task[Output]],
        deadline: float,
        refs: list[Ref],
        inputs: list[Output] | None = None,
    ) -> Output:
        if stage.in_router:
            return await self._in_router(stage, source, tasks)
        if inputs is None:
            inputs = [source if name == SOURCE else await tasks[name] for name in stage.inputs]
        srt = self.stages[stage.name]
        if srt.selects:
            inputs = [_selected(out, srt.selects.get(i), srt.slots[i]) for i, out in enumerate(inputs)]
        if srt.skips_empty and all(i.table is not None and not len(i.table) for i in inputs):
            srt.stats.skipped += 1
            return Output(table=Table(stage.program.schema))
        out = await self._call(srt, rid, inputs, deadline)
        if out.ref is not None:
            refs.append(out.ref)
        return out

    async def _in_router(self, stage: Stage, source: Output, tasks: dict[str, asyncio.Task[Output]]) -> Output:
        """Run the stage here: an ``anyof`` on the first input that arrives (skipping failed ones),
        a gathered join or union on all its inputs."""
        loop = asyncio.get_running_loop()
        srt = self.stages[stage.name]
        if srt.first_ready:  # timed from the start: how long the first input took
            start = loop.time()
            ready = await self._first_inputs(srt, source, tasks)
            program = rewrite(stage.program, lambda node: _first_ready(node, set(ready)))
        else:  # timed once all inputs are in: what it cost here
            inputs = [source if name == SOURCE else await tasks[name] for name in stage.inputs]
            ready = {i: out.table for i, out in enumerate(inputs)}  # type: ignore[misc]
            program = stage.program
            start = loop.time()
        slots = {n.slot: n for n in walk(program) if isinstance(n, StageInput)}
        table = self._engine.run(program, {slots[i]: t for i, t in ready.items() if i in slots})
        srt.stats.record(loop.time() - start)
        return Output(table=table)

    async def _first_inputs(
        self, srt: StageRuntime, source: Output, tasks: dict[str, asyncio.Task[Output]]
    ) -> dict[int, Table]:
        """The inputs of an ``anyof`` stage that are ready once the first arrives (the request
        itself when it reads the source); a failure when every input failed."""
        stage = srt.stage
        if SOURCE in stage.inputs:
            return {i: source.table for i, n in enumerate(stage.inputs) if n == SOURCE}  # type: ignore[misc]
        loop = asyncio.get_running_loop()
        start = loop.time()
        ready: dict[int, Table] = {}
        waiting = {tasks[n] for n in stage.inputs}
        errors: list[BaseException] = []
        while waiting and not ready:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    errors.append(task.exception())  # type: ignore[arg-type]
                    continue
                for i, name in enumerate(stage.inputs):
                    if tasks[name] is task:
                        ready[i] = task.result().table  # type: ignore[assignment]
        if not ready:
            srt.stats.record(loop.time() - start, ok=False, kind=type(errors[0]).__name__)
            raise errors[0]
        return ready

    # -- one stage call -------------------------------------------------------------------------

    async def _call(self, srt: StageRuntime, rid: str, inputs: Sequence[Output], deadline: float) -> Output:
        stage = srt.stage
        prefer = await self._locality(stage, inputs) if stage.locality else None
        lost: set[ReplicaRef] = set()  # gone, or drained: wait for others when none is left
        full: set[ReplicaRef] = set()  # refused this call for want of room
        loop = asyncio.get_running_loop()
        woken = False
        while True:
            live = [r for r in srt.replicas if r not in lost]
            if not live:
                await self._await_replicas(srt, lost)
                continue
            room = with_room((r for r in live if r not in full), srt.inflight, srt.limit)
            if not room or (srt.waiting and not woken):  # first come, first served
                await self._queue(srt, len(live), deadline - loop.time(), first=woken)
                full.clear()
                woken = True
                continue
            if srt.race is not None:
                chosen = choose_racers(room, srt.inflight, srt.race.racers(), shared=stage.concurrent)
            else:
                one = choose_replica(room, srt.inflight, srt.turn, prefer)
                srt.turn += 1
                chosen = [] if one is None else [one]
            start = loop.time()
            if srt.hedge is not None and chosen:
                result = await self._hedged(srt, srt.hedge, chosen[0], rid, inputs, deadline)
            elif len(chosen) == 1:
                result = await self._send(srt, chosen[0], rid, inputs, deadline)
            else:
                result = await self._race(srt, chosen, rid, inputs, deadline)
            if result is FULL:
                full.update(chosen)
                continue
            if not isinstance(result, tuple):
                lost.update(chosen)
                srt.stats.retries += 1
                continue
            outcome, batch = result
            failed = isinstance(outcome, FlowError)
            seconds = loop.time() - start
            srt.stats.record(seconds, not failed, batch, type(outcome).__name__ if failed else None)
            srt.latency.add(seconds)
            if srt.race is not None and not failed:
                srt.race.observe(len(chosen), seconds)
            if isinstance(outcome, FlowError):
                raise outcome
            return outcome

    async def _queue(self, srt: StageRuntime, replicas: int, remaining: float, first: bool) -> None:
        """Wait in the stage's queue until a replica may have room (``first``: at its head, for a
        call that was already woken once); ``OverloadError`` at once when the queue is full or the
        call would not get a slot and finish within the ``remaining`` seconds."""
        if not first:
            if len(srt.waiting) >= srt.max_queue:
                raise self._overloaded(srt, replicas, "its queue is full")
            wait = expected_wait(len(srt.waiting), srt.latency.value, replicas * srt.limit)
            if not in_time(wait, srt.latency.value, remaining):
                raise self._overloaded(
                    srt, replicas, f"it would not answer within the request's {remaining:.2f} s left"
                )
        waiter = asyncio.get_running_loop().create_future()
        if first:
            srt.waiting.appendleft(waiter)
        else:
            srt.waiting.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:  # its deadline passed while queued: leave the queue
            if waiter in srt.waiting:
                srt.waiting.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                srt.wake()  # it was woken as it gave up: pass the turn on
            raise

    def _overloaded(self, srt: StageRuntime, replicas: int, why: str) -> OverloadError:
        srt.stats.rejected += 1
        wait = retry_after(len(srt.waiting), srt.latency.value, replicas * srt.limit)
        return OverloadError(
            f"stage {srt.stage.name!r} is overloaded: {why} ({replicas} replica(s) holding {srt.limit} calls "
            f"each, {len(srt.waiting)} queued); retry in {wait:g} s",
            srt.stage.name,
            wait,
        )

    async def _await_replicas(self, srt: StageRuntime, lost: set[ReplicaRef]) -> None:
        while not [r for r in srt.replicas if r not in lost]:
            srt.changed.clear()
            self.controller.poke()
            await srt.changed.wait()
        lost.intersection_update(srt.replicas)

    async def _send(
        self,
        srt: StageRuntime,
        replica: ReplicaRef,
        rid: str,
        inputs: Sequence[Output],
        deadline: float,
        releases: dict[ReplicaRef, Callable[[], None]] | None = None,
    ) -> tuple[Output | FlowError, int] | _Lost | _Full:
        """One call to ``replica``; with ``releases``, it files there how to end the call's
        in-flight accounting early (a race loser's, as its cancel goes out)."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:  # never start a call nobody will wait for
            raise asyncio.TimeoutError
        bulky = srt.bulky or any(i.table is not None and table_nbytes(i.table) > BULKY for i in inputs)
        srt.inflight[replica] = srt.inflight.get(replica, 0) + 1
        given_up = False
        sent = asyncio.get_running_loop().time()
        held = True

        def end() -> None:  # the call no longer holds a slot on its replica (once)
            nonlocal held
            if held:
                held = False
                srt.ended(replica)
                srt.replica_seconds += asyncio.get_running_loop().time() - sent

        if releases is not None:
            releases[replica] = end

        def late(reply: asyncio.Future[Any] | None) -> None:  # the call ended after its request gave up
            end()
            if reply is not None:
                self._release_late(reply)

        try:
            reply = await self.fast.call(
                replica.worker,
                "cf_call",
                bulky=bulky,
                on_late=late,
                replica=replica.id,
                request=rid,
                inputs=[i.wire() for i in inputs],
                timeout=remaining,
                keep=srt.keep,
                peek=srt.peek,
            )
        except asyncio.CancelledError:  # deadline, lost race: ``late`` ends the accounting
            given_up = True
            raise
        except Exception as exc:
            if worker_gone(exc):
                self.controller.worker_lost(replica.worker)
                return LOST
            error = FlowError(f"stage {srt.stage.name!r}: call to {replica.worker} failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            return error, 0
        finally:
            if not given_up:
                end()
        status = reply["status"]
        if status in ("ok", "error"):
            srt.answered[replica] += 1
        if status == "ok":
            if "batch_cost" in reply and replica in srt.devices:
                srt.batch_costs[replica] = reply["batch_cost"]
            ref = Ref(*reply["ref"]) if "ref" in reply else None
            table = decode_table(srt.stage.program.schema, reply["rows"]) if "rows" in reply else None
            if table is not None:  # a stage that answers megabytes keeps its calls on Dask comms
                srt.bulky = table_nbytes(table) > BULKY
            kept = frozenset(reply["kept"]) if "kept" in reply else None
            return Output(table, ref, reply.get("peek") or {}, kept), reply["batch"]
        if status == "error":
            return unpack_error(reply), reply["batch"]
        if status == "overload":
            return FULL
        if status == "expired":
            raise asyncio.TimeoutError
        if status == "lost-input":
            raise _InputLost
        if status == "no-replica":
            self.controller.replica_lost(replica)
        return LOST  # no-replica, drained, cancelled

    async def _race(
        self, srt: StageRuntime, racers: list[ReplicaRef], rid: str, inputs: Sequence[Output], deadline: float
    ) -> tuple[Output | FlowError, int] | _Lost | _Full:
        releases = _releases(srt)
        calls: dict[asyncio.Future[Any], ReplicaRef] = {
            asyncio.ensure_future(self._send(srt, r, rid, inputs, deadline, releases)): r for r in racers
        }
        result, _ = await self._first_of(calls, rid, releases)
        return result

    async def _hedged(
        self,
        srt: StageRuntime,
        policy: HedgePolicy,
        first: ReplicaRef,
        rid: str,
        inputs: Sequence[Output],
        deadline: float,
    ) -> tuple[Output | FlowError, int] | _Lost | _Full:
        """Call ``first``; when it has not answered after the policy's delay, send a second copy to
        the least busy other replica with room (an idle one for a sync stage), take the first
        answer and cancel the other."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        releases = _releases(srt)
        call = asyncio.ensure_future(self._send(srt, first, rid, inputs, deadline, releases))
        calls: dict[asyncio.Future[Any], ReplicaRef] = {call: first}
        try:
            delay = policy.delay()
            if delay is not None:
                await asyncio.wait([call], timeout=min(delay, max(0.0, deadline - start)))
            second = None
            if not call.done():  # a sync stage's busy replica would only queue the copy
                others = [r for r in srt.replicas if r != first and (srt.stage.concurrent or not srt.inflight.get(r))]
                second = choose_replica(with_room(others, srt.inflight, srt.limit), srt.inflight, srt.turn)
            if second is None:
                result = await call
                if isinstance(result, tuple):
                    policy.observe(loop.time() - start)
                return result
            policy.hedged()
            calls[asyncio.ensure_future(self._send(srt, second, rid, inputs, deadline, releases))] = second
            result, winner = await self._first_of(calls, rid, releases)
            if isinstance(result, tuple):
                policy.answered(by_hedge=winner is second)
                policy.observe(loop.time() - start)
            return result
        finally:
            if not call.done() and len(calls) == 1:
                call.cancel()

    async def _first_of(
        self,
        calls: dict[asyncio.Future[Any], ReplicaRef],
        rid: str,
        releases: dict[ReplicaRef, Callable[[], None]] | None,
    ) -> tuple[tuple[Output | FlowError, int] | _Lost | _Full, ReplicaRef | None]:
        """The first answer among calls already sent and who gave it, or LOST / FULL when every
        call was lost or refused. The others are cancelled on their replicas; with ``releases``
        (a concurrent stage, whose replica frees a cancelled call's slot at once), their slots
        count as free here as soon as the cancel is sent: it travels on the same ordered
        connection as any later call."""
        race = Race(list(calls.values()))
        waiting = set(calls)
        try:
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for call in done:
                    result = call.result()
                    decision: Win | Keep | AllLost = (
                        race.answered(calls[call], result) if isinstance(result, tuple) else race.lost(calls[call])
                    )
                    if isinstance(decision, Win):
                        for loser in decision.losers:
                            self._spawn(self.fast.call(loser.worker, "cf_cancel", replica=loser.id, requests=[rid]))
                            if releases is not None and loser in releases:
                                releases[loser]()
                        for other in waiting:
                            other.add_done_callback(self._discard)
                        waiting = set()
                        return result, decision.entrant
                    if isinstance(decision, AllLost):
                        return (FULL if all(c.result() is FULL for c in calls) else LOST), None
            return LOST, None
        finally:
            for call in waiting:
                call.cancel()

    # -- helpers --------------------------------------------------------------------------------

    async def _locality(self, stage: Stage, inputs: Sequence[Output]) -> str | None:
        assert stage.locality is not None
        for out in inputs:
            key = out.first(stage.locality)
            if key is not None:
                try:
                    return await self.store.locate(key)
                except Exception as exc:  # no locality for now; the call itself still runs
                    if not worker_gone(exc) and not isinstance(exc, TimeoutError):
                        raise
                    return None
        return None

    def _discard(self, call: asyncio.Future[Any]) -> None:
        """A race loser finished after all: free whatever output it kept."""
        if call.cancelled() or call.exception() is not None:
            return
        result = call.result()
        if isinstance(result, tuple) and isinstance(result[0], Output) and result[0].ref is not None:
            self._release([result[0].ref])

    def _release_late(self, call: asyncio.Future[Any]) -> None:
        """A call whose request gave up answered after all: free whatever output it kept."""
        if call.cancelled() or call.exception() is not None:
            return
        reply = call.result()
        if reply.get("status") == "ok" and "ref" in reply:
            self._release([Ref(*reply["ref"])])

    def _release(self, refs: list[Ref]) -> None:
        by_worker: dict[str, list[str]] = {}
        for ref in refs:
            by_worker.setdefault(ref.worker, []).append(ref.key)
        for worker, keys in by_worker.items():
            self._spawn(self.fast.call(worker, "cf_release", keys=keys))

    def _spawn(self, coro: Any) -> None:
        """Fire and forget (errors ignored: the worker may be gone)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_retrieve)


def _releases(srt: StageRuntime) -> dict[ReplicaRef, Callable[[], None]] | None:
    """Where a concurrent stage's calls file how to free their slots early (``None``: others)."""
    return {} if srt.stage.concurrent else None


async def _within(coro: Any, seconds: float) -> Any:
    """``await coro`` with a deadline (``asyncio.TimeoutError`` after ``seconds``)."""
    if hasattr(asyncio, "timeout"):  # Python 3.11+: no extra task
        async with asyncio.timeout(seconds):
            return await coro
    return await asyncio.wait_for(coro, seconds)


def _finished_stage(pending: set[str], name: str, task: asyncio.Future[Any]) -> None:
    """A stage is no longer pending once it finished (a cancelled one still counts as pending)."""
    if not task.cancelled():
        pending.discard(name)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _first_ready(node: Node, ready: set[int]) -> Node | None:
    """Put the first input of an ``anyof`` whose slots are all bound first (the one it takes)."""
    if not isinstance(node, AnyOf):
        return None
    for i, child in enumerate(node.inputs):
        if all(n.slot in ready for n in walk(child) if isinstance(n, StageInput)):
            return None if i == 0 else AnyOf((child, *node.inputs[:i], *node.inputs[i + 1 :]))
    return None
