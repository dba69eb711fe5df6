"""What travels between the router and the replicas: tables, references to tables, errors.

Tables ride inside Dask comm messages and fast-path frames as pickled payloads whose large
buffers travel out of band (pickle protocol 5): contiguous numpy arrays as they are, CPU torch
tensors as numpy views of their memory (:func:`encode_table`), so neither is copied into a pickle
and each arrives as a view of the received frame, which belongs to it alone. A stage
output larger than :data:`INLINE_LIMIT` stays on the worker that produced it and the next stage
fetches it worker to worker; smaller ones travel inline through the router, which saves a round
trip. Errors are pickled by value with their cause, so an ``OperatorError`` keeps the user's
original exception (and its worker-side traceback) across the process boundary.
"""

from __future__ import annotations

import pickle
import sys
import traceback
from dataclasses import dataclass, replace
from typing import Any

import cloudpickle
import numpy as np
from distributed.protocol.serialize import to_serialize

from cloudflow_nb.errors import FlowError
from cloudflow_nb.plan import Filter, Map, Node
from cloudflow_nb.table import Schema, Table
from cloudflow_nb.traversal import rewrite

__all__ = [
    "INLINE_LIMIT",
    "Ref",
    "TensorView",
    "decode_table",
    "encode_table",
    "labelled",
    "pack_error",
    "table_nbytes",
    "unpack_error",
]

# 256 KiB: below this, an extra worker -> router -> worker copy costs less than the extra
# round trip (~0.3 ms) a worker-to-worker fetch needs on one host.
INLINE_LIMIT = 256 * 1024

_OTHER_VALUE_BYTES = 64
# Values msgpack carries as they are; anything else (tuples, arrays, objects) is pickled.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


@dataclass(frozen=True)
class Ref:
    """A stage output kept on ``worker`` under ``key`` (``nbytes`` estimated)."""

    worker: str
    key: str
    nbytes: int


def encode_table(table: Table) -> Any:
    """A table's rows for a message whose receiver knows the schema: plain lists when msgpack
    carries every value as it is, else one pickled payload (CPU torch tensors as
    :class:`TensorView`, so that their memory travels out of band like an array's)."""
    rows = [list(row.values()) for row in table]
    if all(type(v) in _PLAIN for row in rows for v in row):
        return rows
    torch = sys.modules.get("torch")  # no tensor exists before torch is imported
    if torch is not None:
        rows = [[TensorView.of(v) if type(v) is torch.Tensor else v for v in row] for row in rows]
    return to_serialize(rows)


def decode_table(schema: Schema, rows: list[list[Any]]) -> Table:
    """The table :func:`encode_table` encoded, given its schema (a :class:`TensorView` that was
    never pickled, as between in-process workers, becomes its tensor here)."""
    names = schema.names
    return Table(
        schema,
        [dict(zip(names, (v.tensor() if type(v) is TensorView else v for v in row), strict=False)) for row in rows],
    )


class TensorView:
    """A CPU torch tensor on its way through a pickle: it pickles as a numpy view of the tensor's
    memory (out of band with protocol 5) and unpickles as a tensor again.

    Only plain, strided, CPU tensors without autograd history and with a numpy dtype travel this
    way (:meth:`of` leaves any other tensor to torch's own pickling).
    """

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    @classmethod
    def of(cls, tensor: Any) -> Any:
        """A view of ``tensor``, or ``tensor`` itself when it cannot be one."""
        if tensor.device.type != "cpu" or tensor.requires_grad or tensor.is_conj() or tensor.is_neg():
            return tensor
        try:
            return cls(tensor.numpy())
        except (TypeError, RuntimeError):  # a sparse or quantized tensor, or a dtype numpy lacks
            return tensor

    def tensor(self) -> Any:
        """The tensor again (sharing this view's memory)."""
        return _tensor(self.array)

    def __reduce__(self) -> tuple[Any, tuple[np.ndarray]]:
        return _tensor, (self.array,)


def _tensor(array: np.ndarray) -> Any:
    import torch

    if not array.flags.writeable:  # torch warns about, and may write to, read-only memory
        array = array.copy()
    return torch.from_numpy(array)


def table_nbytes(table: Table) -> int:
    """A quick estimate of a table's size on the wire (arrays, tensors, bytes and strings counted exactly)."""
    total = 0
    for row in table:
        for value in row.values():
            if isinstance(value, (bytes, bytearray, str)):
                total += len(value)
                continue
            nbytes = getattr(value, "nbytes", None)  # numpy arrays, torch tensors, memoryviews
            total += nbytes if isinstance(nbytes, int) else _OTHER_VALUE_BYTES
    return total


def labelled(program: Node) -> Node:
    """``program`` with every map and filter named by its label, before it is pickled.

    cloudpickle blanks the source file of functions it ships by value, which would turn
    ``<lambda at cell:3>`` into ``<lambda at <dynamic-code>:3>`` in a worker's error messages.
    """

    def name(node: Node) -> Node | None:
        if isinstance(node, Map) and node.name is None:
            return replace(node, name=node.label)
        if isinstance(node, Filter) and node.name is None:
            return Filter(node.child, node.pred, node.label)
        return None

    return rewrite(program, name)


def pack_error(exc: BaseException) -> dict[str, Any]:
    """A request error as plain message fields: the error, its cause, and the cause's traceback."""
    cause = exc.__cause__
    return {
        "error": _dumps(exc),
        "cause": None if cause is None else _dumps(cause),
        "traceback": "" if cause is None else "".join(traceback.format_exception(cause)),
    }


def unpack_error(fields: dict[str, Any]) -> FlowError:
    """The ``FlowError`` from :func:`pack_error`, with its cause chained again."""
    exc = pickle.loads(fields["error"])
    if not isinstance(exc, FlowError):
        exc = FlowError(f"{type(exc).__name__}: {exc}")
    if fields.get("cause") is not None:
        cause = pickle.loads(fields["cause"])
        if fields.get("traceback") and hasattr(cause, "add_note"):  # Python 3.11+
            cause.add_note("traceback on the worker:\n" + fields["traceback"].rstrip())
        exc.__cause__ = cause
    return exc


def _dumps(exc: BaseException) -> bytes:
    try:
        data = cloudpickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:  # an exception type that does not survive pickling: keep its text
        text = f"{type(exc).__name__}: {exc}"
        return pickle.dumps(FlowError(str(exc)) if isinstance(exc, FlowError) else RuntimeError(text))
