"""Typed tables: ``Schema``, ``Row`` and ``Table``, the values that flow between operators.

Every table has a reserved ``qid`` column (an ``int``, always first): the row's position in its
request. ``map`` and ``filter`` keep it, and ``join`` uses it as the default key, so that parallel
branches of one request meet again.
"""

from __future__ import annotations

import html
import numbers
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from cloudflow_nb.errors import SchemaError

__all__ = ["QID", "Row", "Schema", "Table", "type_name"]

QID = "qid"


def type_name(tp: type) -> str:
    """Short display name of a column type (``object`` reads as ``any``)."""
    return "any" if tp is object else tp.__name__


def accepts(tp: type, value: Any) -> bool:
    """Whether ``value`` may be stored in a column of type ``tp`` (``None`` is always allowed)."""
    if value is None or tp is object:
        return True
    if tp is float:
        return isinstance(value, (float, np.floating)) or (
            isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        )
    if tp is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if tp is bool:
        return isinstance(value, (bool, np.bool_))
    if tp is complex:
        return isinstance(value, numbers.Complex) and not isinstance(value, (bool, np.bool_))
    return isinstance(value, tp)


class Schema:
    """Ordered, typed columns; ``qid: int`` always comes first.

    Examples
    --------
    >>> Schema({"x": int, "y": float})
    Schema(qid: int, x: int, y: float)
    """

    __slots__ = ("_columns",)

    def __init__(self, columns: Mapping[str, type] | Iterable[tuple[str, type]] = ()) -> None:
        items = list(columns.items()) if isinstance(columns, Mapping) else list(columns)
        cols: dict[str, type] = {QID: int}
        for name, tp in items:
            if name == QID:
                if tp is not int:
                    raise SchemaError(f"column 'qid' is reserved for int row ids, got {tp!r}")
                continue
            if not isinstance(name, str) or not name:
                raise SchemaError(f"column names must be non-empty strings, got {name!r}")
            if not isinstance(tp, type):
                raise SchemaError(f"column {name!r}: type must be a class, got {tp!r}")
            if name in cols:
                raise SchemaError(f"duplicate column {name!r}")
            cols[name] = tp
        self._columns = cols

    @property
    def names(self) -> tuple[str, ...]:
        """Column names in order, ``qid`` first."""
        return tuple(self._columns)

    def items(self) -> list[tuple[str, type]]:
        """``(name, type)`` pairs in order."""
        return list(self._columns.items())

    def user_columns(self) -> dict[str, type]:
        """Every column but ``qid``."""
        return {k: v for k, v in self._columns.items() if k != QID}

    def __getitem__(self, name: str) -> type:
        return self._columns[name]

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and list(self._columns.items()) == list(other._columns.items())

    def __hash__(self) -> int:
        return hash(tuple(self._columns.items()))

    def with_columns(self, columns: Mapping[str, type]) -> Schema:
        """A schema with ``columns`` added at the end, or replaced in place."""
        merged = dict(self._columns)
        merged.update(columns)
        return Schema(merged)

    def describe(self) -> str:
        """``qid: int, x: float`` style text."""
        return ", ".join(f"{k}: {type_name(v)}" for k, v in self._columns.items())

    def __repr__(self) -> str:
        return f"Schema({self.describe()})"

    def check(self, row: Mapping[str, Any], where: str) -> None:
        """Raise ``SchemaError`` unless ``row`` has exactly this schema's columns with fitting values."""
        expected = self.user_columns()
        given = [k for k in row if k != QID]
        missing = [k for k in expected if k not in row]
        extra = [k for k in given if k not in expected]
        if missing:
            raise SchemaError(f"{where}: missing column {missing[0]!r} (expected columns: {list(expected)})")
        if extra:
            raise SchemaError(f"{where}: unknown column {extra[0]!r} (expected columns: {list(expected)})")
        for name, tp in expected.items():
            value = row[name]
            if value is None or not accepts(tp, value):
                raise SchemaError(
                    f"{where}: column {name!r} expects {type_name(tp)}, got {type(value).__name__} {_short(value)}"
                )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Row(Mapping[str, Any]):
    """A read-only mapping ``column -> value`` with its ``qid``."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    @property
    def qid(self) -> int:
        """The row's id within its request."""
        return self._data[QID]

    def __getitem__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise KeyError(f"row has no column {key!r} (columns: {list(self._data)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping) or set(self._data) != set(other):
            return False
        return all(_values_equal(v, other[k]) for k, v in self._data.items())

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """A plain dict copy of the row."""
        return dict(self._data)

    def __repr__(self) -> str:
        return "Row(" + ", ".join(f"{k}={_short(v)}" for k, v in self._data.items()) + ")"

    def __reduce__(self):
        return (Row, (self._data,))


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    try:
        result = a == b
        return bool(result)
    except Exception:
        return a is b


class Table:
    """An ordered collection of ``Row`` s sharing one ``Schema``.

    Build one from a dict (one row), a list of dicts, or a pandas ``DataFrame`` with
    :meth:`Table.from_request`, or from rows that already carry a ``qid``.

    Examples
    --------
    >>> t = Table.from_request([{"x": 1}, {"x": 2}], Schema({"x": int}))
    >>> len(t), t.columns, [r["x"] for r in t]
    (2, ('qid', 'x'), [1, 2])
    """

    __slots__ = ("_rows", "_schema")

    def __init__(self, schema: Schema, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        self._schema = schema
        self._rows = tuple(r if isinstance(r, Row) else Row(r) for r in rows)

    @classmethod
    def from_request(cls, request: Any, schema: Schema, where: str = "request") -> Table:
        """Validate a request (dict, list of dicts, ``Table`` or ``DataFrame``) against ``schema``.

        Rows get ``qid`` = their position, except rows of a ``Table``, which keep theirs.
        """
        if isinstance(request, Table):
            if request.schema.names != schema.names:
                raise SchemaError(f"{where}: table has columns {list(request.columns)}, expected {list(schema.names)}")
            for row in request:
                schema.check(row, where)
            return request
        if _is_dataframe(request):
            records = request.to_dict(orient="records")
        elif isinstance(request, Mapping):
            records = [request]
        elif isinstance(request, (list, tuple)):
            records = list(request)
        else:
            raise SchemaError(
                f"{where}: expected a dict, a list of dicts, a cf.Table or a DataFrame, got {type(request).__name__}"
            )
        rows = []
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise SchemaError(f"{where}: row {i} must be a dict, got {type(record).__name__}")
            if QID in record:
                raise SchemaError(f"{where}: row {i} defines 'qid', which is reserved for row ids")
            schema.check(record, f"{where} row {i}")
            rows.append({QID: i, **{k: record[k] for k in schema.user_columns()}})
        return cls(schema, rows)

    @property
    def schema(self) -> Schema:
        """The table's schema."""
        return self._schema

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names, ``qid`` first."""
        return self._schema.names

    @property
    def rows(self) -> tuple[Row, ...]:
        """The rows, in order."""
        return self._rows

    def column(self, name: str) -> list[Any]:
        """The values of one column, in row order."""
        if name not in self._schema:
            raise SchemaError(f"unknown column {name!r} (columns: {list(self.columns)})")
        return [r[name] for r in self._rows]

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> Row:
        return self._rows[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Table):
            return NotImplemented
        return (
            self._schema == other._schema
            and len(self) == len(other)
            and all(a == b for a, b in zip(self._rows, other._rows, strict=True))
        )

    __hash__ = None  # type: ignore[assignment]

    def to_records(self) -> list[dict[str, Any]]:
        """The rows as plain dicts."""
        return [r.to_dict() for r in self._rows]

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` with one column per schema column."""
        import pandas as pd

        return pd.DataFrame({name: self.column(name) for name in self.columns}, columns=list(self.columns))

    def __repr__(self) -> str:
        return f"<cf.Table {len(self)} rows: {self._schema.describe()}>"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(n)}</th>" for n in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_short(r[n]))}</td>" for n in self.columns) + "</tr>"
            for r in self._rows[:50]
        )
        more = f"<p>... {len(self) - 50} more rows</p>" if len(self) > 50 else ""
        types = html.escape(self._schema.describe())
        return (
            f"<div><small>cf.Table, {len(self)} rows ({types})</small>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}</div>"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        try:
            return {"text/html": self._repr_html_(), "text/plain": repr(self)}
        except Exception:  # a repr must never raise in a notebook
            return {"text/plain": f"<cf.Table {len(self._rows)} rows>"}

    def __reduce__(self):
        return (_rebuild_table, (self._schema.items(), [r.to_dict() for r in self._rows]))


def _rebuild_table(items: list[tuple[str, type]], rows: list[dict[str, Any]]) -> Table:
    return Table(Schema(items), rows)


def _is_dataframe(value: Any) -> bool:
    return type(value).__name__ == "DataFrame" and hasattr(value, "to_dict")
