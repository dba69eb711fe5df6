"""The local engine: an in-process reference interpreter for plans.

Every other engine is tested against it. It evaluates a plan for one or several requests at
once: a batching ``map`` gets the rows of all requests in one call, and every other operator runs
per request, so a failure in one request never touches another.

An ``async def`` map's coroutine is run by the engine's ``run_coroutine`` (by default on a fresh
event loop, in a helper thread when this thread already runs one; a replica runs it on its
worker's event loop, where it can be cancelled).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cloudflow_nb.errors import FlowError, MissingKeyError, OperatorError, SchemaError
from cloudflow_nb.physical import SOURCE, Plan, Stage
from cloudflow_nb.plan import (
    NO_DEFAULT,
    Agg,
    AnyOf,
    Explode,
    Filter,
    Join,
    Lookup,
    Map,
    Mark,
    Node,
    Select,
    Source,
    StageInput,
    Union,
)
from cloudflow_nb.table import QID, Row, Table, accepts, type_name
from cloudflow_nb.traversal import walk

__all__ = ["LocalEngine", "await_here", "needed_nodes"]

Bindings = Mapping[Node, Table]


def needed_nodes(root: Node) -> list[Node]:
    """Nodes ``root`` depends on, inputs first; ``anyof`` needs only its first input locally."""
    return list(walk(root, _inputs_used))


class LocalEngine:
    """Evaluates plan nodes in this process.

    Parameters
    ----------
    store : Mapping, optional
        Where ``lookup`` reads from (a dict in local runs, the cluster store on workers).
    run_coroutine : callable, optional
        Runs an async map's coroutine to its result (default: :func:`await_here`).
    """

    def __init__(
        self,
        store: Mapping[str, Any] | None = None,
        run_coroutine: Callable[[Coroutine[Any, Any, Any]], Any] | None = None,
    ) -> None:
        self.store = store
        self.run_coroutine = run_coroutine or await_here
        self._instances: dict[int, tuple[Node, Any]] = {}
        self._lock = threading.Lock()

    # -- public -------------------------------------------------------------------------------

    def run(self, root: Node, bindings: Bindings) -> Table:
        """Evaluate ``root`` for one request; raise its error if it failed."""
        (result,) = self.run_many(root, [bindings])
        if isinstance(result, BaseException):
            raise result
        return result

    def run_many(self, root: Node, requests: Sequence[Bindings]) -> list[Table | FlowError]:
        """Evaluate ``root`` for several independent requests; each gets a table or its own error."""
        values: list[dict[int, Table]] = [{id(n): t for n, t in b.items()} for b in requests]
        errors: list[FlowError | None] = [None] * len(requests)
        for node in needed_nodes(root):
            if isinstance(node, (Source, StageInput)):
                for i, v in enumerate(values):
                    if errors[i] is None and id(node) not in v:
                        raise FlowError(f"no input bound for {node.title}")
                continue
            live = [i for i in range(len(requests)) if errors[i] is None]
            if isinstance(node, Map) and node.batching:
                self._batched_map(node, live, values, errors)
                continue
            for i in live:
                inputs = [values[i][id(c)] for c in _inputs_used(node)]
                try:
                    values[i][id(node)] = self.evaluate_node(node, inputs)
                except FlowError as exc:
                    errors[i] = exc
        return [errors[i] or values[i][id(root)] for i in range(len(requests))]

    def run_plan(self, plan: Plan, request: Table) -> Table:
        """Run a physical plan stage by stage; must equal :meth:`run` on its logical plan."""
        results: dict[str, Table] = {SOURCE: request}
        for stage in plan.stages:
            results[stage.name] = self.run_stage(stage, [results[name] for name in stage.inputs])
        return results[plan.output.name]

    def run_stage(self, stage: Stage, inputs: Sequence[Table]) -> Table:
        """Run one stage's program on its input tables."""
        return self.run(stage.program, dict(zip(stage.slots, inputs, strict=True)))

    def instance(self, node: Map | Filter) -> Any:
        """The callable for ``node``: its function, or its class built once per engine."""
        fn = node.fn if isinstance(node, Map) else node.pred
        if not node.is_class:
            return fn
        entry = self._instances.get(id(node))
        if entry is None:
            with self._lock:
                entry = self._instances.get(id(node))
                if entry is None:
                    try:
                        obj = fn()
                    except Exception as exc:
                        raise OperatorError(
                            f"{node.title}: building {fn.__name__}() failed: {type(exc).__name__}: {exc}",
                            node.title,
                        ) from exc
                    entry = (node, obj)
                    self._instances[id(node)] = entry
        return entry[1]

    def warm_up(self, root: Node) -> None:
        """Build every class-based operator under ``root`` now (models load here)."""
        for node in needed_nodes(root):
            operator = node.filter if isinstance(node, Mark) else node
            if isinstance(operator, (Map, Filter)) and operator.is_class:
                self.instance(operator)

    # -- operators ----------------------------------------------------------------------------

    def evaluate_node(self, node: Node, inputs: list[Table]) -> Table:
        """One operator over its input tables (per request)."""
        if isinstance(node, Map):
            return self._map(node, inputs[0])
        if isinstance(node, Filter):
            return self._filter(node, inputs[0])
        if isinstance(node, Mark):
            return self._mark(node, inputs[0])
        if isinstance(node, Select):
            return _select(node, inputs[0])
        if isinstance(node, Explode):
            return _explode(node, inputs[0])
        if isinstance(node, Agg):
            return _aggregate(node, inputs[0])
        if isinstance(node, Lookup):
            return self._lookup(node, inputs[0])
        if isinstance(node, Join):
            return _join(node, inputs[0], inputs[1])
        if isinstance(node, Union):
            return Table(node.schema, [r for t in inputs for r in t])
        if isinstance(node, AnyOf):
            return inputs[0]
        raise FlowError(f"the local engine cannot run {node.title}")

    def _map(self, node: Map, table: Table) -> Table:
        fn = self.instance(node)
        outs = [_call_user(node, fn, row, self.run_coroutine) for row in table]
        return Table(node.schema, [_merge(node, row, out) for row, out in zip(table, outs, strict=True)])

    async def map_async(self, node: Map, table: Table) -> Table:
        """An async (unbatched) map over ``table`` on the running event loop, row after row."""
        fn = self.instance(node)
        outs = []
        for row in table:
            try:
                outs.append(await fn(row))
            except FlowError:
                raise
            except Exception as exc:
                raise _user_error(node, row, exc) from exc
        return Table(node.schema, [_merge(node, row, out) for row, out in zip(table, outs, strict=True)])

    def _batched_map(
        self, node: Map, live: list[int], values: list[dict[int, Table]], errors: list[FlowError | None]
    ) -> None:
        batch = [(i, row) for i in live for row in values[i][id(node.child)]]
        try:
            results = self.call_batch(node, [row for _, row in batch])
        except FlowError as exc:
            if len(live) == 1:
                errors[live[0]] = exc
                return
            for i in live:  # isolate the failing request: rerun each one alone
                rows = list(values[i][id(node.child)])
                try:
                    out = self.call_batch(node, rows)
                    merged = [_merge(node, r, o) for r, o in zip(rows, out, strict=True)]
                    values[i][id(node)] = Table(node.schema, merged)
                except FlowError as exc2:
                    errors[i] = exc2
            return
        per_request: dict[int, list[Row]] = {i: [] for i in live}
        for (i, row), result in zip(batch, results, strict=True):
            if errors[i] is not None:
                continue
            try:
                per_request[i].append(_merge(node, row, result))
            except FlowError as exc:
                errors[i] = exc
        for i in live:
            if errors[i] is None:
                values[i][id(node)] = Table(node.schema, per_request[i])

    def call_batch(self, node: Map, rows: list[Row]) -> list[Any]:
        """Call a batching map's function once on ``rows``; check it returned one result per row."""
        if not rows:
            return []
        fn = self.instance(node)
        try:
            results = fn(rows)
            if inspect.iscoroutine(results):
                results = self.run_coroutine(results)
        except FlowError:
            raise
        except Exception as exc:
            raise OperatorError(
                f"{node.title} failed on a batch of {len(rows)} rows: {type(exc).__name__}: {exc}", node.title
            ) from exc
        try:
            results = list(results)
        except TypeError:
            raise OperatorError(
                f"{node.title}: a batching function must return a list, got {type(results).__name__}", node.title
            ) from None
        if len(results) != len(rows):
            raise OperatorError(
                f"{node.title}: a batching function must return one result per row "
                f"(got {len(results)} results for {len(rows)} rows)",
                node.title,
            )
        return results

    def _filter(self, node: Filter, table: Table) -> Table:
        pred = self.instance(node)
        return Table(node.schema, [row for row in table if _verdict(node, _call_user(node, pred, row), row)])

    def _mark(self, node: Mark, table: Table) -> Table:
        """A hoisted filter's verdict on each row, as a column (errors name the filter)."""
        f = node.filter
        pred = self.instance(f)
        return Table(node.schema, [{**row, node.column: _verdict(f, _call_user(f, pred, row), row)} for row in table])

    def _lookup(self, node: Lookup, table: Table) -> Table:
        if len(table) == 0:
            return Table(node.schema)
        if self.store is None:
            raise FlowError(f"{node.title}: no store to read from; pass store= to run() or deploy on a cluster")
        if node.dynamic:
            values = [self._fetch(node, row[node.key]) for row in table]
        else:
            values = [self._fetch(node, node.key)] * len(table)
        return Table(node.schema, [{**r, node.target: v} for r, v in zip(table, values, strict=True)])

    def _fetch(self, node: Lookup, key: Any) -> Any:
        assert self.store is not None
        try:
            value = self.store[key]
        except KeyError:
            if node.default is NO_DEFAULT:
                raise MissingKeyError(f"{node.title}: key {key!r} is not in the store") from None
            value = node.default
        if not accepts(node.type, value):
            raise SchemaError(
                f"{node.title}: value of key {key!r} is {type(value).__name__}, expected {type_name(node.type)}"
            )
        return value


def await_here(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to its result on a fresh event loop (in a helper thread when this thread
    already runs a loop, as in a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="cf-async") as helper:
        return helper.submit(asyncio.run, coro).result()


def _call_user(
    node: Map | Filter, fn: Any, row: Row, run: Callable[[Coroutine[Any, Any, Any]], Any] = await_here
) -> Any:
    """``fn(row)`` (run to its result when it is a coroutine); a user exception becomes an
    ``OperatorError`` naming the operator and row."""
    try:
        out = fn(row)
        return run(out) if inspect.iscoroutine(out) else out
    except FlowError:
        raise
    except Exception as exc:
        raise _user_error(node, row, exc) from exc


def _user_error(node: Map | Filter, row: Row, exc: Exception) -> OperatorError:
    return OperatorError(f"{node.title} failed on qid {row.qid}: {type(exc).__name__}: {exc}", node.title)


def _verdict(node: Filter, kept: Any, row: Row) -> bool:
    """A filter's answer for ``row``: a ``bool`` (numpy's too), never the truthiness of something else."""
    if isinstance(kept, (bool, np.bool_)):
        return bool(kept)
    raise OperatorError(f"{node.title} must return a bool, got {type(kept).__name__} (qid {row.qid})", node.title)


def _select(node: Select, table: Table) -> Table:
    """The rows a hoisted filter kept, without the hoisted filters' columns."""
    kept = [row for row in table if row[node.column]]
    return Table(node.schema, [{k: v for k, v in row.items() if k not in node.marks} for row in kept])


def _inputs_used(node: Node) -> tuple[Node, ...]:
    return node.children[:1] if isinstance(node, AnyOf) else node.children


def _explode(node: Explode, table: Table) -> Table:
    out: list[Row] = []
    for row in table:
        items = row[node.column]
        if items is None:
            continue
        if not isinstance(items, (list, tuple, np.ndarray)):
            raise SchemaError(
                f"{node.title}: column {node.column!r} must hold a list, a tuple or an array, "
                f"got {type(items).__name__} (qid {row.qid})"
            )
        for item in items:
            base = Row({QID: len(out), **{c: row[c] for c in node.kept}})
            out.append(_merge(node, base, item))
    return Table(node.schema, out)


def _merge(node: Map | Explode, row: Row, result: Any) -> Row:
    """The input row with ``node``'s output columns from ``result`` added or replaced."""
    names = node.output_names
    if len(names) == 1:
        outputs = {names[0]: result}
    elif isinstance(result, Mapping):
        if set(result) != set(names):
            raise OperatorError(f"{node.title} returned keys {sorted(result)}, expected {list(names)}", node.title)
        outputs = {n: result[n] for n in names}
    elif isinstance(result, (tuple, list)) and len(result) == len(names):
        outputs = dict(zip(names, result, strict=True))
    else:
        got = f"{len(result)} values" if isinstance(result, (tuple, list)) else type(result).__name__
        raise OperatorError(
            f"{node.title} must return {len(names)} values (a tuple or a dict for {list(names)}), got {got}",
            node.title,
        )
    for name, tp in node.names:
        if not accepts(tp, outputs[name]):
            raise OperatorError(
                f"{node.title} returned {type(outputs[name]).__name__} for column {name!r}, expected {type_name(tp)}",
                node.title,
            )
    merged = row.to_dict()
    merged.update(outputs)
    return Row(merged)


def _aggregate(node: Agg, table: Table) -> Table:
    groups: dict[Any, list[Row]] = {}
    if node.by is None:
        groups[None] = list(table)
    else:
        for row in table:
            groups.setdefault(_group_key(row[node.by]), []).append(row)
    out = []
    for index, rows in enumerate(groups.values()):
        record: dict[str, Any] = {}
        if node.by == QID:
            record[QID] = rows[0][QID]
        else:
            record[QID] = index
            if node.by is not None:
                record[node.by] = rows[0][node.by]
        record[node.output_name] = _reduce(node, rows)
        out.append(record)
    return Table(node.schema, out)


def _group_key(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return ("unhashable", repr(value))


def _reduce(node: Agg, rows: list[Row]) -> Any:
    if node.fn == "count":
        return len(rows)
    assert node.column is not None
    values = [r[node.column] for r in rows if r[node.column] is not None]
    try:
        if node.fn == "sum":
            return sum(values) if values else 0
        if not values:
            return None
        if node.fn == "mean":
            return float(sum(values) / len(values))
        return min(values) if node.fn == "min" else max(values)
    except TypeError as exc:
        raise OperatorError(f"{node.title}: cannot {node.fn} column {node.column!r}: {exc}", node.title) from exc


def _join(node: Join, left: Table, right: Table) -> Table:
    key = node.on
    index: dict[Any, list[Row]] = {}
    for r in right:
        index.setdefault(_group_key(r[key]), []).append(r)
    right_only = [c for c in node.right.schema.names if c not in node.left.schema]
    matched: set[int] = set()
    out: list[dict[str, Any]] = []
    for lrow in left:
        matches = index.get(_group_key(lrow[key]), [])
        for rrow in matches:
            matched.add(id(rrow))
            out.append({**lrow, **{c: rrow[c] for c in right_only}})
        if not matches and node.how in ("left", "outer"):
            out.append({**lrow, **dict.fromkeys(right_only)})
    if node.how == "outer":
        for rrow in right:
            if id(rrow) not in matched:
                record = {c: rrow.get(c) for c in node.schema.names}
                out.append(record)
    out.sort(key=lambda r: r[QID])
    return Table(node.schema, out)
