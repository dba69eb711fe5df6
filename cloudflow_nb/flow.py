"""``Flow``: the immutable, fluent builder users compose pipelines with.

Every operator method checks its arguments against the current schema, then returns a new
``Flow`` wrapping one new plan node. Nothing runs until :meth:`Flow.run` or a deployment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cloudflow_nb.errors import SchemaError
from cloudflow_nb.plan import NO_DEFAULT, Agg, AnyOf, Explode, Filter, Join, Lookup, Map, Node, Source, Union
from cloudflow_nb.runtime.local import LocalEngine
from cloudflow_nb.table import QID, Schema, Table
from cloudflow_nb.traversal import walk

if TYPE_CHECKING:
    import graphviz

    from cloudflow_nb.optimize.options import Optimize
    from cloudflow_nb.physical import Plan

__all__ = ["Flow", "GroupedFlow"]


class Flow:
    """A dataflow of black-box operators over typed tables.

    Parameters
    ----------
    name : str
        The flow's name (positional only).
    **columns : type
        The request's input columns and their types.

    Examples
    --------
    >>> import cloudflow_nb as cf
    >>> flow = cf.Flow("double", x=int)
    >>> out = flow.map(lambda row: row["x"] * 2, names={"y": int})
    >>> [row["y"] for row in out.run([{"x": 1}, {"x": 5}])]
    [2, 10]
    """

    __slots__ = ("_engine", "_node")

    def __init__(self, name: str, /, **columns: type) -> None:
        self._node: Node = Source(name, tuple(columns.items()))
        self._engine: LocalEngine | None = None

    @classmethod
    def _from_node(cls, node: Node) -> Flow:
        flow = object.__new__(cls)
        flow._node = node
        flow._engine = None
        return flow

    # -- inspection ---------------------------------------------------------------------------

    @property
    def node(self) -> Node:
        """The logical plan's root node."""
        return self._node

    @property
    def source(self) -> Source:
        """The flow's input node."""
        return next(n for n in walk(self._node) if isinstance(n, Source))

    @property
    def name(self) -> str:
        """The flow's name."""
        return self.source.name

    @property
    def schema(self) -> Schema:
        """The output schema."""
        return self._node.schema

    @property
    def columns(self) -> tuple[str, ...]:
        """The output column names, ``qid`` first."""
        return self._node.schema.names

    @property
    def input_schema(self) -> Schema:
        """The schema a request must match."""
        return self.source.schema

    # -- operators ----------------------------------------------------------------------------

    def map(
        self,
        fn: Any,
        names: Sequence[str] | Mapping[str, type] | str,
        *,
        batching: bool = False,
        gpu: bool = False,
        high_variance: bool = False,
        releases_gil: bool = False,
        name: str | None = None,
    ) -> Flow:
        """Add or replace the ``names`` columns with ``fn(row)``.

        ``fn`` is a function of a ``Row`` or a class, built once per engine or replica, whose
        instances are called per row. It returns one value per name: the value itself for one
        name, else a tuple or a dict. With ``batching=True`` it takes a list of rows and returns a
        list of results in order. ``gpu=True`` places it on GPU-tagged workers;
        ``high_variance=True`` lets the optimizer race replicas of it.

        ``fn`` may be an ``async def`` function (or a class with an ``async def __call__``): it
        then runs on the replica's event loop, many calls at once, and is cancelled for real
        when it loses a race or misses its deadline. ``releases_gil=True`` declares a sync ``fn``
        that spends its time outside the GIL (I/O, sleeping, native code) and is safe to call
        from several threads at once: several of its replicas may share a worker, and a call
        that lost a race is left to finish in the background instead of holding its replica.
        """
        node = Map(self._node, fn, _normalize_names(names), batching, gpu, high_variance, name, releases_gil)
        return self._wrap(node)

    def filter(self, pred: Any, *, name: str | None = None) -> Flow:
        """Keep the rows for which ``pred(row)`` is true."""
        return self._wrap(Filter(self._node, pred, name))

    def explode(
        self,
        column: str,
        names: Sequence[str] | Mapping[str, type] | str,
        *,
        keep: Sequence[str] | None = None,
    ) -> Flow:
        """One row per element of the list in ``column`` (a detector's boxes, say).

        Each element gives the ``names`` columns, read like a map's result (the value itself for
        one name, else a tuple or a dict). The rows keep the ``keep`` columns (default: every
        column but ``column``) and get fresh qids, their positions in the exploded table.

        Examples
        --------
        >>> import cloudflow_nb as cf
        >>> flow = cf.Flow("words", text=str)
        >>> words = flow.map(lambda row: row["text"].split(), names={"words": list})
        >>> [row["word"] for row in words.explode("words", names={"word": str}).run({"text": "a b"})]
        ['a', 'b']
        """
        if isinstance(keep, str):
            raise SchemaError(f"explode {column!r}: keep must be a list of column names, got the string {keep!r}")
        kept = None if keep is None else tuple(keep)
        return self._wrap(Explode(self._node, column, _normalize_names(names), kept))

    def groupby(self, column: str) -> GroupedFlow:
        """Group rows by ``column``; follow with ``.agg(fn, column)``."""
        if column not in self.schema:
            raise SchemaError(f"groupby: unknown column {column!r} (columns: {list(self.schema.names)})")
        return GroupedFlow(self, column)

    def agg(self, fn: str, column: str | None = None) -> Flow:
        """One row: ``fn`` (count, sum, min, max, mean) over ``column``."""
        return self._wrap(Agg(self._node, fn, column))

    def lookup(
        self,
        key: str,
        *,
        dynamic: bool = False,
        into: str | None = None,
        default: Any = NO_DEFAULT,
        type: type = object,
    ) -> Flow:
        """Add a value from the key-value store.

        Static: ``store[key]`` into column ``into or key``. Dynamic: ``key`` names a column and
        each row gets ``store[row[key]]`` into column ``into or key``. A missing key raises a
        ``FlowError`` unless ``default`` is given.
        """
        return self._wrap(Lookup(self._node, key, dynamic, into, default, type))

    def join(self, other: Flow, on: str = QID, how: str = "inner") -> Flow:
        """Join with ``other`` on column ``on`` (inner, left or outer)."""
        self._same_source("join", (other,))
        return self._wrap(Join(self._node, other._node, on, how))

    def union(self, *others: Flow) -> Flow:
        """All rows of this flow and ``others``, in argument order (schemas must match)."""
        self._same_source("union", others)
        return self._wrap(Union((self._node, *(o._node for o in others))))

    def anyof(self, *others: Flow) -> Flow:
        """Per request, the table of whichever input finishes first (schemas must match)."""
        self._same_source("anyof", others)
        return self._wrap(AnyOf((self._node, *(o._node for o in others))))

    # -- running and rendering ----------------------------------------------------------------

    def run(self, request: Any, store: Mapping[str, Any] | None = None) -> Table:
        """Run the flow in this process (the reference semantics) and return the result table.

        ``request`` is a dict (one row), a list of dicts, a ``cf.Table`` or a ``DataFrame``;
        ``store`` is where lookups read from.
        """
        table = Table.from_request(request, self.input_schema, where=f"flow {self.name!r} request")
        if self._engine is None:
            self._engine = LocalEngine()
        self._engine.store = store
        return self._engine.run(self._node, {self.source: table})

    def optimize(self, options: Optimize | bool | None = None, stage: str | None = None) -> Plan:
        """The physical plan the optimizer makes of this flow (``False``: no rewrites).

        ``stage`` stops after that optimizer pass (see ``cf.optimize_until``).
        """
        from cloudflow_nb.optimize import PASSES, optimize_until, resolve_options

        return optimize_until(self, stage or PASSES[-1], resolve_options(options))

    def explain(self, optimized: bool = True, options: Optimize | bool | None = None, stage: str | None = None) -> str:
        """Deterministic text of the optimized plan (after pass ``stage``), or of the logical one."""
        from cloudflow_nb.explain import explain_logical

        if not optimized:
            return explain_logical(self._node)
        return self.optimize(options, stage).explain()

    def show_graph(
        self, optimized: bool = True, options: Optimize | bool | None = None, stage: str | None = None
    ) -> graphviz.Digraph:
        """A ``graphviz.Digraph`` of the optimized plan (after pass ``stage``), or of the logical one."""
        from cloudflow_nb.viz import logical_graph

        if not optimized:
            return logical_graph(self._node)
        return self.optimize(options, stage).show_graph()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        from cloudflow_nb.viz import mimebundle

        return mimebundle(lambda: self.show_graph(optimized=False), lambda: self.explain(optimized=False), repr(self))

    def __repr__(self) -> str:
        try:
            ops = sum(1 for n in walk(self._node) if not isinstance(n, Source))
            return f"<cf.Flow {self.name!r}: {ops} operators -> ({self.schema.describe()})>"
        except Exception:
            return "<cf.Flow>"

    def __reduce__(self) -> tuple[Any, ...]:
        # ship the plan only: the cached engine holds a lock and built model instances
        return (_flow_from_node, (self._node,))

    # -- helpers ------------------------------------------------------------------------------

    def _wrap(self, node: Node) -> Flow:
        return Flow._from_node(node)

    def _same_source(self, op: str, others: Sequence[Any]) -> None:
        for i, other in enumerate(others):
            if not isinstance(other, Flow):
                raise SchemaError(f"{op}: input {i + 1} must be a cf.Flow, got {type(other).__name__}")
            if other.source is not self.source:
                raise SchemaError(
                    f"{op}: input {i + 1} comes from flow {other.name!r}, not {self.name!r}; "
                    "branches must grow from the same cf.Flow"
                )


class GroupedFlow:
    """A flow grouped by one column, waiting for ``.agg(fn, column)``."""

    __slots__ = ("_by", "_flow")

    def __init__(self, flow: Flow, by: str) -> None:
        self._flow = flow
        self._by = by

    def agg(self, fn: str, column: str | None = None) -> Flow:
        """One row per group: the group column, then ``<fn>_<column>`` (or ``count``)."""
        return self._flow._wrap(Agg(self._flow.node, fn, column, self._by))

    def __repr__(self) -> str:
        return f"<cf.GroupedFlow {self._flow.name!r} by {self._by!r}>"


def _flow_from_node(node: Node) -> Flow:
    return Flow._from_node(node)


def _normalize_names(names: Any) -> tuple[tuple[str, type], ...]:
    if isinstance(names, str):
        return ((names, object),)
    if isinstance(names, Mapping):
        return tuple(names.items())
    if isinstance(names, Sequence):
        out = []
        for n in names:
            if not isinstance(n, str):
                raise SchemaError(f"map: names must be strings, got {n!r}")
            out.append((n, object))
        return tuple(out)
    raise SchemaError(f"map: names must be a list of names or a dict name -> type, got {type(names).__name__}")
