"""What the HTTP endpoint says, without the HTTP: JSON bodies to request rows, tables and errors to replies.

Pure functions, no I/O, so that they are unit-tested without a server and so that big bodies can
be decoded in a worker process (:func:`decode_request` and :func:`encode_table` pickle).

Requests: a body nested deeper than ``max_depth`` is refused before it is parsed (brackets are
counted over the raw bytes, so nothing recurses); ``NaN``, ``Infinity`` and numbers too large for a
float are refused; an ``np.ndarray`` column takes a rectangular nested list of numbers (or bools);
a ``bytes`` column takes base64. Results: arrays become nested lists, ``bytes`` base64, and a
non-finite float (``nan``, ``inf``) becomes ``null`` so that every answer is valid JSON.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloudflow_nb.errors import (
    FlowError,
    FlowTimeoutError,
    MissingKeyError,
    OperatorError,
    OverloadError,
    SchemaError,
)
from cloudflow_nb.table import QID, Schema, Table

__all__ = ["BodyFormat", "decode_request", "encode", "encode_table", "error_reply", "nesting_depth"]

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENING = np.zeros(256, np.int8)
_OPENING[[ord("["), ord("{")]] = 1
_NON_FINITE = "holds a number too large for a float; non-finite numbers are refused"
_NUMERIC = "biuf"  # the array kinds a JSON array of numbers or bools gives


@dataclass(frozen=True)
class BodyFormat:
    """How to read a flow's request body: its array and ``bytes`` columns, and the nesting limit."""

    arrays: frozenset[str]
    binary: frozenset[str]
    max_depth: int

    @classmethod
    def of(cls, schema: Schema, max_depth: int) -> BodyFormat:
        """The format of requests to a flow whose input schema is ``schema``."""
        columns = schema.user_columns()
        return cls(
            frozenset(k for k, tp in columns.items() if tp is np.ndarray),
            frozenset(k for k, tp in columns.items() if tp is bytes),
            max_depth,
        )


def nesting_depth(body: bytes) -> int:
    """How deep ``[`` and ``{`` nest in a JSON text, outside strings; counted without parsing."""
    brackets = np.frombuffer(_STRING.sub(b"", body).translate(None, _NOT_BRACKETS), np.uint8)
    if brackets.size == 0:
        return 0
    opening = _OPENING[brackets]
    return max(0, int(np.cumsum(2 * opening.astype(np.int32) - 1).max()))


def decode_request(body: bytes, fmt: BodyFormat) -> list[dict[str, Any]]:
    """A JSON body (one object or a list of objects) -> request rows; ``SchemaError`` names the problem."""
    depth = nesting_depth(body)
    if depth > fmt.max_depth:
        raise SchemaError(f"request body nests {depth} levels deep, more than the limit of {fmt.max_depth}")
    try:
        payload = json.loads(body or b"null", parse_constant=_refuse_constant)
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer of too many digits
        raise SchemaError(f"request body is not JSON: {exc}") from None
    rows = [payload] if isinstance(payload, dict) else payload
    if not isinstance(rows, list):
        raise SchemaError(f"request: expected a JSON object or a list of objects, got {_json_type(payload)}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise SchemaError(f"request row {i} must be a JSON object, got {_json_type(row)}")
        out.append({k: _decode_value(fmt, f"request row {i} column {k!r}", k, v) for k, v in row.items()})
    return out


def _decode_value(fmt: BodyFormat, where: str, column: str, value: Any) -> Any:
    if column == QID:
        return value  # refused by the schema check, which says why
    if column in fmt.arrays and isinstance(value, list):
        return _to_array(where, value)
    if column in fmt.binary and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise SchemaError(f"{where}: expected base64 text for bytes, got {_preview(value)}") from None
    if not _finite(value):
        raise SchemaError(f"{where}: {_NON_FINITE}")
    return value


def _to_array(where: str, value: list[Any]) -> np.ndarray:
    expected = "expected a rectangular nested list of numbers"
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise SchemaError(f"{where}: {expected}, got a ragged one") from None
    if array.dtype.kind not in _NUMERIC:
        raise SchemaError(f"{where}: {expected}, got {_array_content(array)}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise SchemaError(f"{where}: {_NON_FINITE}")
    return array


def _array_content(array: np.ndarray) -> str:
    if array.dtype.kind == "U":
        return "strings"
    kinds = sorted({_json_type(v) for v in array.reshape(-1)[:1000]})
    return "values of kinds " + ", ".join(kinds) + " (or integers beyond 64 bits)"


def _finite(value: Any) -> bool:
    """No infinite float anywhere in a decoded JSON value (checked without recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return True


def _refuse_constant(name: str) -> Any:
    raise SchemaError(f"request body holds {name}; non-finite numbers are refused")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a bool", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _preview(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:40]) + "..."


# -- answers ----------------------------------------------------------------------------------------


def encode_table(table: Table) -> bytes:
    """The JSON answer for a result table: ``{"columns": [...], "rows": [...]}``."""
    return encode({"columns": list(table.columns), "rows": [row.to_dict() for row in table]})


def encode(body: Any) -> bytes:
    """``body`` as JSON bytes: arrays as lists, ``bytes`` as base64, ``nan`` and infinities as ``null``."""
    try:
        text = json.dumps(body, default=_json_value, allow_nan=False)
    except ValueError:  # a non-finite float somewhere: those become null
        text = json.dumps(_finite_only(body), allow_nan=False)
    return text.encode()


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors and the like
        return value.tolist()
    return repr(value)


def _finite_only(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_only(v) for v in value]
    if isinstance(value, (str, int)) or value is None:
        return value
    return _finite_only(_json_value(value))


def error_reply(exc: FlowError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The status, JSON body and headers that answer a request which failed with ``exc``.

    ======================  ======  ==========================================
    error                   status  body besides ``error``
    ======================  ======  ==========================================
    ``SchemaError``         400
    ``MissingKeyError``     422
    ``OperatorError``       422     ``operator``
    ``OverloadError``       429     ``stage``, ``retry_after``; ``Retry-After``
    ``DeploymentError``     503     (the deployment is closed)
    other ``FlowError``     503     (the cluster could not serve it)
    ``FlowTimeoutError``    504
    ======================  ======  ==========================================
    """
    body: dict[str, Any] = {"error": str(exc)}
    if isinstance(exc, OverloadError):
        body.update(stage=exc.stage, retry_after=exc.retry_after)
        return 429, body, {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if isinstance(exc, FlowTimeoutError):
        return 504, body, {}
    if isinstance(exc, SchemaError):
        return 400, body, {}
    if isinstance(exc, OperatorError):
        body["operator"] = exc.operator
        return 422, body, {}
    if isinstance(exc, MissingKeyError):
        return 422, body, {}
    return 503, body, {}
