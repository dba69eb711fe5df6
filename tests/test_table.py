"""Schema, Row and Table: typed values, request validation, equality and notebook reprs."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

import cloudflow_nb as cf
from cloudflow_nb.table import accepts


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


# -- Schema --------------------------------------------------------------------------------------


def test_schema_puts_qid_first():
    schema = cf.Schema({"x": int, "y": float})
    assert schema.names == ("qid", "x", "y")
    assert schema["qid"] is int
    assert schema.user_columns() == {"x": int, "y": float}
    assert "x" in schema
    assert "z" not in schema
    assert len(schema) == 3


def test_schema_equality_is_ordered_and_hashable():
    assert cf.Schema({"x": int, "y": float}) == cf.Schema([("x", int), ("y", float)])
    assert cf.Schema({"x": int, "y": float}) != cf.Schema({"y": float, "x": int})
    assert cf.Schema({"x": int}) != cf.Schema({"x": float})
    assert hash(cf.Schema({"x": int})) == hash(cf.Schema({"x": int}))


def test_schema_repr_and_describe():
    schema = cf.Schema({"x": int, "img": np.ndarray, "any": object})
    assert repr(schema) == "Schema(qid: int, x: int, img: ndarray, any: any)"


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"qid": float}, "reserved"),
        ({"x": "int"}, "must be a class"),
        ({"": int}, "non-empty"),
        ([("x", int), ("x", float)], "duplicate column 'x'"),
    ],
)
def test_schema_rejects_bad_columns(columns, message):
    with pytest.raises(cf.SchemaError, match=message):
        cf.Schema(columns)


def test_schema_errors_are_flow_errors_and_type_errors():
    with pytest.raises(cf.FlowError):
        cf.Schema({"x": "int"})
    with pytest.raises(TypeError):
        cf.Schema({"x": "int"})


# -- accepted values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tp", "value"),
    [
        (int, 3),
        (int, np.int64(3)),
        (int, np.int8(-1)),
        (float, 1.5),
        (float, 2),  # an int is accepted for a float
        (float, np.float32(1.5)),
        (float, np.int32(2)),
        (bool, True),
        (bool, np.bool_(False)),
        (str, "text"),
        (bytes, b"raw"),
        (np.ndarray, np.zeros(3)),
        (Point, Point(1)),
        (object, "anything"),
        (int, None),  # missing values are None
    ],
)
def test_accepts(tp, value):
    assert accepts(tp, value)


@pytest.mark.parametrize(
    ("tp", "value"),
    [
        (int, True),  # a bool is not an int
        (int, np.bool_(True)),
        (int, 1.0),
        (int, np.float64(1.0)),
        (float, True),
        (float, "1.5"),
        (bool, 1),
        (str, b"bytes"),
        (bytes, "str"),
        (np.ndarray, [1, 2]),
        (Point, object()),
    ],
)
def test_rejects(tp, value):
    assert not accepts(tp, value)


# -- Table.from_request ------------------------------------------------------------------------


SCHEMA = cf.Schema({"x": int, "y": float})


def test_request_from_one_dict_is_one_row():
    table = cf.Table.from_request({"x": 1, "y": 2.5}, SCHEMA)
    assert len(table) == 1
    assert table[0] == {"qid": 0, "x": 1, "y": 2.5}


def test_request_from_list_numbers_rows_by_position():
    table = cf.Table.from_request([{"x": 1, "y": 0.5}, {"y": 1.5, "x": 2}], SCHEMA)
    assert [row.qid for row in table] == [0, 1]
    assert table.column("x") == [1, 2]
    assert list(table[1]) == ["qid", "x", "y"]  # schema order, whatever the dict order


def test_request_from_dataframe():
    df = pd.DataFrame({"x": [1, 2, 3], "y": [0.5, 1.0, 1.5]})
    table = cf.Table.from_request(df, SCHEMA)
    assert table.column("x") == [1, 2, 3]
    assert table.column("qid") == [0, 1, 2]


def test_request_from_table_keeps_its_qids():
    given = cf.Table(SCHEMA, [{"qid": 5, "x": 1, "y": 1.0}, {"qid": 9, "x": 2, "y": 2.0}])
    table = cf.Table.from_request(given, SCHEMA)
    assert table.column("qid") == [5, 9]


def test_request_from_table_with_other_columns_is_rejected():
    other = cf.Table(cf.Schema({"x": int}), [{"qid": 0, "x": 1}])
    with pytest.raises(cf.SchemaError, match="expected"):
        cf.Table.from_request(other, SCHEMA)


def test_empty_request_is_an_empty_table():
    table = cf.Table.from_request([], SCHEMA)
    assert len(table) == 0
    assert table.columns == ("qid", "x", "y")


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"x": 1}, "missing column 'y'"),
        ({"x": 1, "y": 1.0, "z": 0}, "unknown column 'z'"),
        ({"x": "1", "y": 1.0}, "column 'x' expects int, got str"),
        ({"x": True, "y": 1.0}, "column 'x' expects int, got bool"),
        ({"x": 1, "y": None}, "column 'y' expects float"),
        ({"qid": 3, "x": 1, "y": 1.0}, "reserved"),
        ([{"x": 1, "y": 1.0}, 7], "row 1 must be a dict"),
        (42, "expected a dict, a list of dicts"),
    ],
)
def test_bad_requests_name_the_problem(request_, message):
    with pytest.raises(cf.SchemaError, match=message):
        cf.Table.from_request(request_, SCHEMA)


# -- Row -------------------------------------------------------------------------------------------


def test_row_is_a_read_only_mapping_with_qid():
    row = cf.Row({"qid": 3, "x": 1})
    assert row.qid == 3
    assert row["x"] == 1
    assert dict(row) == {"qid": 3, "x": 1}
    assert len(row) == 2
    with pytest.raises(TypeError):
        row["x"] = 2  # type: ignore[index]
    assert row.to_dict() == {"qid": 3, "x": 1}


def test_row_missing_column_names_the_columns():
    row = cf.Row({"qid": 0, "x": 1})
    with pytest.raises(KeyError, match=r"no column 'y'.*\['qid', 'x'\]"):
        row["y"]


def test_row_equality_handles_arrays():
    assert cf.Row({"qid": 0, "a": np.arange(3)}) == cf.Row({"qid": 0, "a": np.arange(3)})
    assert cf.Row({"qid": 0, "a": np.arange(3)}) != cf.Row({"qid": 0, "a": np.arange(1, 4)})
    assert cf.Row({"qid": 0, "a": np.arange(3)}) != cf.Row({"qid": 0, "a": [0, 1, 2]})
    assert cf.Row({"qid": 0, "x": 1}) == {"qid": 0, "x": 1}
    assert cf.Row({"qid": 0, "x": 1}) != {"qid": 0}


def test_row_is_unhashable_and_repr_is_short():
    row = cf.Row({"qid": 0, "text": "a" * 100})
    with pytest.raises(TypeError):
        hash(row)
    assert len(repr(row)) < 80
    assert repr(row).startswith("Row(qid=0, text='aaa")


# -- Table -----------------------------------------------------------------------------------------


def make_table() -> cf.Table:
    return cf.Table.from_request([{"x": 1, "y": 0.5}, {"x": 2, "y": 1.5}], SCHEMA)


def test_table_iterates_rows_in_order():
    table = make_table()
    rows = list(table)
    assert all(isinstance(r, cf.Row) for r in rows)
    assert [r["x"] for r in rows] == [1, 2]
    assert table.columns == ("qid", "x", "y")
    assert table.schema == SCHEMA
    assert table.rows == tuple(rows)
    assert table.to_records() == [{"qid": 0, "x": 1, "y": 0.5}, {"qid": 1, "x": 2, "y": 1.5}]


def test_table_unknown_column():
    with pytest.raises(cf.SchemaError, match=r"unknown column 'z'"):
        make_table().column("z")


def test_table_equality():
    assert make_table() == make_table()
    other = cf.Table.from_request([{"x": 1, "y": 0.5}], SCHEMA)
    assert make_table() != other
    assert make_table() != cf.Table(cf.Schema({"x": int, "y": object}), make_table().to_records())
    assert make_table() != "not a table"


def test_any_class_such_as_a_tensor_is_a_column_type():
    torch = pytest.importorskip("torch")  # an optional extra
    assert accepts(torch.Tensor, torch.ones(2))
    assert not accepts(torch.Tensor, np.ones(2))
    schema = cf.Schema({"t": torch.Tensor, "p": Point})
    table = cf.Table.from_request({"t": torch.ones(2), "p": Point(3)}, schema)
    assert table[0]["p"].x == 3
    assert torch.equal(table[0]["t"], torch.ones(2))


def test_to_pandas():
    df = make_table().to_pandas()
    assert list(df.columns) == ["qid", "x", "y"]
    assert df["x"].tolist() == [1, 2]
    assert df["y"].tolist() == [0.5, 1.5]


def test_to_pandas_of_empty_table_keeps_columns():
    df = cf.Table.from_request([], SCHEMA).to_pandas()
    assert list(df.columns) == ["qid", "x", "y"]
    assert len(df) == 0


def test_table_pickles():
    table = make_table()
    assert pickle.loads(pickle.dumps(table)) == table


def test_table_repr_is_one_short_line():
    assert repr(make_table()) == "<cf.Table 2 rows: qid: int, x: int, y: float>"


def test_table_html_repr_escapes_values():
    schema = cf.Schema({"s": str})
    table = cf.Table.from_request({"s": "<script>alert(1)</script>"}, schema)
    html = table._repr_html_()
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "<th>qid</th><th>s</th>" in html
    bundle = table._repr_mimebundle_()
    assert set(bundle) == {"text/html", "text/plain"}
    assert bundle["text/plain"] == repr(table)


def test_table_html_repr_truncates_long_tables():
    table = cf.Table.from_request([{"x": i} for i in range(60)], cf.Schema({"x": int}))
    html = table._repr_html_()
    assert html.count("<tr>") == 51  # header + 50 rows
    assert "10 more rows" in html


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("broken repr")


def test_table_mimebundle_never_raises_on_broken_values():
    table = cf.Table.from_request({"v": Unprintable()}, cf.Schema({"v": Unprintable}))
    bundle = table._repr_mimebundle_(include=None, exclude=None)
    assert bundle == {"text/plain": "<cf.Table 1 rows>"}
