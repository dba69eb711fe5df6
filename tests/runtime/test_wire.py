"""Errors and tables on the wire, without Dask."""

from __future__ import annotations

import pickle

import numpy as np

import cloudflow_nb as cf
from cloudflow_nb.runtime.wire import labelled, pack_error, table_nbytes, unpack_error


class Unpicklable(Exception):
    def __init__(self, a, b):
        super().__init__(a)
        self.lock = __import__("threading").Lock()


def test_operator_error_keeps_its_cause_and_worker_traceback():
    try:
        try:
            raise ValueError("bad pixel")
        except ValueError as exc:
            raise cf.OperatorError("map 'resnet' failed", "map 'resnet'") from exc
    except cf.OperatorError as exc:
        fields = pickle.loads(pickle.dumps(pack_error(exc)))
    error = unpack_error(fields)
    assert isinstance(error, cf.OperatorError)
    assert error.operator == "map 'resnet'"
    assert isinstance(error.__cause__, ValueError)
    assert "bad pixel" in str(error.__cause__)
    assert any("traceback on the worker" in note for note in error.__cause__.__notes__)


def test_an_unpicklable_cause_travels_as_text():
    error = cf.OperatorError("map 'f' failed", "map 'f'")
    error.__cause__ = Unpicklable("locked", 2)
    back = unpack_error(pack_error(error))
    assert isinstance(back.__cause__, RuntimeError)
    assert "Unpicklable: locked" in str(back.__cause__)


def test_table_size_counts_arrays_and_strings():
    schema = cf.Schema({"a": np.ndarray, "s": str})
    table = cf.Table.from_request([{"a": np.zeros(1000), "s": "abc"}], schema)
    assert table_nbytes(table) >= 8000 + 3


def test_labelled_names_lambdas_before_shipping():
    flow = cf.Flow("f", x=int).map(lambda row: 1, names="y")
    program = labelled(flow.node)
    assert program.name.startswith("<lambda at test_wire.py:")
    assert program.fn is flow.node.fn
