"""The logical plan: one frozen dataclass per operator, validated on construction.

A plan is a DAG of nodes; each node knows its inputs (``children``) and its output ``schema``.
Nodes never run anything: the engines in :mod:`cloudflow_nb.runtime` interpret them and the
optimizer in :mod:`cloudflow_nb.optimize` groups them into physical stages.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from cloudflow_nb.errors import SchemaError
from cloudflow_nb.labels import callable_label
from cloudflow_nb.table import QID, Schema, type_name

__all__ = [
    "AGGREGATES",
    "JOIN_KINDS",
    "NO_DEFAULT",
    "Agg",
    "AnyOf",
    "Explode",
    "Filter",
    "Join",
    "Lookup",
    "Map",
    "Mark",
    "Node",
    "Select",
    "Source",
    "StageInput",
    "Union",
]

AGGREGATES = ("count", "sum", "min", "max", "mean")
JOIN_KINDS = ("inner", "left", "outer")


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"

    def __reduce__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


@dataclass(frozen=True, eq=False)
class Node:
    """Base class of plan nodes. Equality is structural; hashing is by identity."""

    kind: ClassVar[str] = "node"
    schema: Schema = field(init=False, repr=False)

    @property
    def children(self) -> tuple[Node, ...]:
        """The nodes this one reads from, in order."""
        return ()

    @property
    def label(self) -> str:
        """What the operator does, for text and graph renderings."""
        return ""

    @property
    def title(self) -> str:
        """``kind 'label'``: how error messages name the operator."""
        return f"{self.kind} {self.label!r}" if self.label else self.kind

    def replace_children(self, children: tuple[Node, ...]) -> Node:
        """A copy of this node reading from ``children`` instead."""
        raise NotImplementedError

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self.__dataclass_fields__ if f != "schema")

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(self) is not type(other):
            return False
        return all(_same(a, b) for a, b in zip(self._fields(), other._fields(), strict=True))  # type: ignore[attr-defined]

    __hash__ = object.__hash__

    def _set_schema(self, schema: Schema) -> None:
        object.__setattr__(self, "schema", schema)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Node) or isinstance(b, Node):
        return a == b
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False


def _check_names(op: str, names: tuple[tuple[str, type], ...]) -> None:
    """Raise ``SchemaError`` unless ``names`` are distinct, typed output columns other than ``qid``."""
    if not names:
        raise SchemaError(f"{op}: names must list at least one output column")
    seen = set()
    for col, tp in names:
        if not isinstance(col, str) or not col:
            raise SchemaError(f"{op}: output column names must be non-empty strings, got {col!r}")
        if col == QID:
            raise SchemaError(f"{op}: column 'qid' is reserved for row ids")
        if col in seen:
            raise SchemaError(f"{op}: duplicate output column {col!r}")
        if not isinstance(tp, type):
            raise SchemaError(f"{op}: type of column {col!r} must be a class, got {tp!r}")
        seen.add(col)


def _need_column(op: str, schema: Schema, column: str) -> None:
    if column not in schema:
        raise SchemaError(f"{op}: unknown column {column!r} (columns: {list(schema.names)})")


@dataclass(frozen=True, eq=False)
class Source(Node):
    """The request's input table."""

    kind: ClassVar[str] = "source"
    name: str
    columns: tuple[tuple[str, type], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SchemaError(f"flow name must be a non-empty string, got {self.name!r}")
        for col, tp in self.columns:
            if col == QID:
                raise SchemaError("source: column 'qid' is reserved for row ids; choose another name")
            if not isinstance(tp, type):
                raise SchemaError(
                    f"source {self.name!r}: type of column {col!r} must be a class "
                    f"(e.g. int, float, str, bool, bytes, np.ndarray), got {tp!r}"
                )
        self._set_schema(Schema(self.columns))

    @property
    def label(self) -> str:
        return self.name

    def replace_children(self, children: tuple[Node, ...]) -> Node:
        return self


@dataclass(frozen=True, eq=False)
class StageInput(Node):
    """A stage's input slot: the output of another stage, bound at run time."""

    kind: ClassVar[str] = "input"
    slot: int
    columns: tuple[tuple[str, type], ...]
    origin: str = ""

    def __post_init__(self) -> None:
        self._set_schema(Schema(self.columns))

    @property
    def label(self) -> str:
        return self.origin or f"#{self.slot}"

    def replace_children(self, children: tuple[Node, ...]) -> Node:
        return self


@dataclass(frozen=True, eq=False)
class Map(Node):
    """``fn(row)`` (or, with ``batching``, ``fn(rows)``) adds or replaces the ``names`` columns."""

    kind: ClassVar[str] = "map"
    child: Node
    fn: Any
    names: tuple[tuple[str, type], ...]
    batching: bool = False
    gpu: bool = False
    high_variance: bool = False
    name: str | None = None
    releases_gil: bool = False

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise SchemaError(f"map: fn must be a function or a class, got {type(self.fn).__name__}")
        _check_names(f"map {self.label!r}", self.names)
        for flag in ("batching", "gpu", "high_variance", "releases_gil"):
            if not isinstance(getattr(self, flag), bool):
                raise SchemaError(f"map {self.label!r}: {flag} must be True or False")
        self._set_schema(self.child.schema.with_columns(dict(self.names)))

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.child,)

    @property
    def label(self) -> str:
        return self.name or callable_label(self.fn)

    @property
    def is_class(self) -> bool:
        """Whether ``fn`` is a class, built once per engine or replica."""
        return inspect.isclass(self.fn)

    @property
    def is_async(self) -> bool:
        """Whether ``fn`` is an ``async def`` function, or a class or object with an ``async def __call__``."""
        return inspect.iscoroutinefunction(self.fn) or inspect.iscoroutinefunction(self.fn.__call__)

    @property
    def concurrent(self) -> bool:
        """Whether several calls may run at once in one process: async, or declared ``releases_gil``."""
        return self.is_async or self.releases_gil

    @property
    def output_names(self) -> tuple[str, ...]:
        """The columns this map writes."""
        return tuple(n for n, _ in self.names)

    def replace_children(self, children: tuple[Node, ...]) -> Node:
        (child,) = children
        return replace(self, child=child)


@dataclass(frozen=True, eq=False)
class Filter(Node):
    """Keeps the rows for which ``pred(row)`` is true."""

    kind: ClassVar[str] = "filter"
    child: Node
    pred: Any
    name: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.pred):
            raise SchemaError(f"filter: pred must be callable, got {type(self.pred).__name__}")
        self._set_schema(self.child.schema)

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.child,)

    @property
    def label(self) -> str:
        return self.name or callable_label(self.pred)

    @property
    def is_class(self) -> bool:
        """Whether ``pred`` is a class, built once per engine or replica."""
        return inspect.isclass(self.pred)

    def replace_children(self, children: tuple[Node, ...]) -> Node:
        (child,) = children
        return Filter(child, self.pred, self.name)


@dataclass(frozen=True, eq=False)
class Mark(Node):
    """A filter hoisted into the stage that feeds it (physical plans only): adds the bool
    ``column``, whether ``filter``'s predicate keeps each row, and drops no row."""

    kind: ClassVar[str] = "mark"
    child: Node
    filter: Filter
    column: str

    def __post_init__(self) -> None:
        self._set_schema(self.child.schema.with_columns({self.column: bool}))

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.child,)

    @property
    def label(self) -> str:
        return self.filter.label

    def replace_children(self, children: tuple[Node, ...]) -> Node:
        (child,) = children
        return Mark(child, self.filter, self.column)


@dataclass(frozen=True, eq=False)
class Select(Node):
    """The rows a hoisted filter kept (physical plans only): those whose bool ``column`` is true,
    without the ``marks`` columns of all hoisted filters."""

    kind: ClassVar[str] = "select"
    child: Node
    column: str
    marks: tuple[str, ...]

    def __post_init__(self) -> None:
        _need_column("select", self.child.schema, self.column)
        self._set_schema(Schema([(n, t) for n, t in self.child.schema.items() if n not in self.marks]))

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.child,)

    @property
    def label(self) -> str:
        return self.column

    def replace_children(self, children: tuple[Node, ...]) -> Node:
        (child,) = children
        return Select(child, self.column, self.marks)


@dataclass(frozen=True, eq=False)
class Explode(Node):
    """One row per element of the sequence in ``column``; each element gives the ``names`` columns.

    An element is read like a map's result: the value itself for one name, else a tuple or a
    dict. The output keeps the ``keep`` columns (every input column but ``column`` when ``keep`` is
    None) and numbers its rows afresh: ``qid`` is the row's position in the exploded table, so
    branches that grow from it re-join per element. ``None`` in ``column`` gives no rows.
    """

    kind: ClassVar[str] = "explode"
    child: Node
    column: str
    names: tuple[tuple[str, type], ...]
    keep: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        src = self.child.schema
        _need_column("explode", src, self.column)
        _check_names(f"explode {self.label!r}", self.names)
        for col in self.keep or ():
            _need_column(f"explode {self.label!r} (keep)", src, col)
            if col in (QID, self.column):
                raise SchemaError(f"explode {self.label!r}: cannot keep column {col!r} (it is renumbered or exploded)")
        kept = [(col, src[col]) for col in self.kept]
        self._set_schema(Schema(kept).with_columns(dict(self.names)))

    @property
    def kept(self) -> tuple[str, ...]:
        """The input columns copied into every output row."""
        if self.keep is not None:
            return self.keep
        return tuple(c for c in self.child.schema.names if c not in (QID, self.column))

    @property
    def output_names(self) -> tuple[str, ...]:
        """The columns each element writes."""
        return tuple(n for n, _ in self.names)

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.child,)

    @property
    def label(self) -> str:
        return self.column

    def replace_children(self, children: tuple[Node, ...]) -> Node:
        (child,) = children
        return Explode(child, self.column, self.names, self.keep)


@dataclass(frozen=True, eq=False)
class Agg(Node):
    """``fn`` over ``column``, per group of ``by`` (one group when ``by`` is None)."""

    kind: ClassVar[str] = "agg"
    child: Node
    fn: str
    column: str | None = None
    by: str | None = None

    def __post_init__(self) -> None:
        src = self.child.schema
        if self.fn not in AGGREGATES:
            raise SchemaError(f"agg: unknown aggregate {self.fn!r} (must be one of {', '.join(AGGREGATES)})")
        if self.by is not None:
            _need_column("groupby", src, self.by)
        if self.fn != "count":
            if self.column is None:
                raise SchemaError(f"agg {self.fn!r}: needs a column (columns: {list(src.names)})")
            _need_column(f"agg {self.fn!r}", src, self.column)
            ctype = src[self.column]
            if self.fn in ("sum", "mean") and ctype not in (int, float, object, bool):
                raise SchemaError(
                    f"agg {self.fn!r}: column {self.column!r} is {type_name(ctype)}, expected int or float"
                )
        elif self.column is not None:
            _need_column("agg 'count'", src, self.column)
        self._set_schema(Schema(self.output_columns()))

    @property
    def output_name(self) -> str:
        """``count`` or ``<fn>_<column>``."""
        return "count" if self.fn == "count" else f"{self.fn}_{self.column}"

    def output_columns(self) -> list[tuple[str, type]]:
        """The group column (if any), then the aggregate."""
        src = self.child.schema
        cols: list[tuple[str, type]] = []
        if self.by is not None and self.by != QID:
            cols.append((self.by, src[self.by]))
        if self.fn == "count":
            out: type = int
        elif self.fn == "mean":
            out = float
        else:
            assert self.column is not None
            out = src[self.column]
            if self.fn == "sum" and out is bool:
                out = int
        cols.append((self.output_name, out))
        return cols

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.child,)

    @property
    def label(self) -> str:
        target = "*" if self.column is None else self.column
        return f"{self.fn}({target})" + (f" by {self.by}" if self.by else "")

    def replace_children(self, children: tuple[Node, ...]) -> Node:
        (child,) = children
        return Agg(child, self.fn, self.column, self.by)


@dataclass(frozen=True, eq=False)
class Lookup(Node):
    """Adds a value read from the key-value store.

    Static: ``store[key]`` into column ``into or key``. Dynamic: ``key`` names a column and each
    row gets ``store[row[key]]`` into column ``into or key``.
    """

    kind: ClassVar[str] = "lookup"
    child: Node
    key: str
    dynamic: bool = False
    into: str | None = None
    default: Any = NO_DEFAULT
    type: type = object

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise SchemaError(f"lookup: key must be a non-empty string, got {self.key!r}")
        if self.dynamic:
            _need_column("lookup (dynamic)", self.child.schema, self.key)
        if self.target == QID:
            raise SchemaError("lookup: column 'qid' is reserved for row ids; pass into= another name")
        if not isinstance(self.type, type):
            raise SchemaError(f"lookup: type must be a class, got {self.type!r}")
        self._set_schema(self.child.schema.with_columns({self.target: self.type}))

    @property
    def target(self) -> str:
        """The column the value lands in."""
        return self.into or self.key

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.child,)

    @property
    def label(self) -> str:
        return f"{'row[' + self.key + ']' if self.dynamic else self.key}"

    def replace_children(self, children: tuple[Node, ...]) -> Node:
        (child,) = children
        return Lookup(child, self.key, self.dynamic, self.into, self.default, self.type)


@dataclass(frozen=True, eq=False)
class Join(Node):
    """Equi-join of two inputs on ``on``: left columns, then right columns not already present."""

    kind: ClassVar[str] = "join"
    left: Node
    right: Node
    on: str = QID
    how: str = "inner"

    def __post_init__(self) -> None:
        if self.how not in JOIN_KINDS:
            raise SchemaError(f"join: unknown how={self.how!r} (must be one of {', '.join(JOIN_KINDS)})")
        _need_column("join (left input)", self.left.schema, self.on)
        _need_column("join (right input)", self.right.schema, self.on)
        lt, rt = self.left.schema[self.on], self.right.schema[self.on]
        if lt is not rt and object not in (lt, rt):
            raise SchemaError(
                f"join: column {self.on!r} is {type_name(lt)} on the left but {type_name(rt)} on the right"
            )
        extra = [(k, v) for k, v in self.right.schema.items() if k not in self.left.schema]
        self._set_schema(Schema(self.left.schema.items() + extra))

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)

    @property
    def label(self) -> str:
        return f"{self.how} on {self.on}"

    def replace_children(self, children: tuple[Node, ...]) -> Node:
        left, right = children
        return Join(left, right, self.on, self.how)


def _same_schema(op: str, inputs: tuple[Node, ...]) -> Schema:
    if len(inputs) < 2:
        raise SchemaError(f"{op}: needs at least two inputs, got {len(inputs)}")
    first = inputs[0].schema
    for i, other in enumerate(inputs[1:], start=1):
        if other.schema != first:
            raise SchemaError(
                f"{op}: input {i} has schema ({other.schema.describe()}), "
                f"expected the same as input 0 ({first.describe()}): {_schema_difference(first, other.schema, i)}"
            )
    return first


def _schema_difference(first: Schema, other: Schema, i: int) -> str:
    """The first column on which two schemas differ, in words."""
    for name, tp in other.items():
        if name not in first:
            return f"column {name!r} is not in input 0"
        if first[name] is not tp:
            return f"column {name!r} is {type_name(tp)} in input {i} but {type_name(first[name])} in input 0"
    for name in first:
        if name not in other:
            return f"column {name!r} is missing from input {i}"
    return "the columns are in a different order"


@dataclass(frozen=True, eq=False)
class Union(Node):
    """All rows of all inputs, in argument order."""

    kind: ClassVar[str] = "union"
    inputs: tuple[Node, ...]

    def __post_init__(self) -> None:
        self._set_schema(_same_schema("union", self.inputs))

    @property
    def children(self) -> tuple[Node, ...]:
        return self.inputs

    def replace_children(self, children: tuple[Node, ...]) -> Node:
        return Union(tuple(children))


@dataclass(frozen=True, eq=False)
class AnyOf(Node):
    """Per request, the table of whichever input finishes first."""

    kind: ClassVar[str] = "anyof"
    inputs: tuple[Node, ...]

    def __post_init__(self) -> None:
        self._set_schema(_same_schema("anyof", self.inputs))

    @property
    def children(self) -> tuple[Node, ...]:
        return self.inputs

    def replace_children(self, children: tuple[Node, ...]) -> Node:
        return AnyOf(tuple(children))
