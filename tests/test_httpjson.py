"""The endpoint's pure parts: reading bodies, writing answers, and which status each error gets."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import cloudflow_nb as cf
from cloudflow_nb.httpjson import BodyFormat, decode_request, encode, encode_table, error_reply, nesting_depth

SCHEMA = cf.Flow("f", img=np.ndarray, raw=bytes, n=int).input_schema
FMT = BodyFormat.of(SCHEMA, max_depth=4)


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"1", 0),
        (b"[]", 1),
        (b'{"a": [[1], {"b": []}]}', 4),
        (b'["[[[[", "\\"[[[", 1]', 1),  # brackets inside strings, escaped quotes too
        (b"[" * 10_000, 10_000),  # unclosed: counted all the same
        (b"]]][", 0),  # invalid JSON, refused by the parser later
    ],
)
def test_nesting_depth_counts_brackets_outside_strings(body, depth):
    assert nesting_depth(body) == depth


def test_decode_turns_lists_into_arrays_and_base64_into_bytes():
    rows = decode_request(b'[{"img": [[1, 2], [3, 4]], "raw": "YWJj", "n": 1}, {"img": [], "raw": "", "n": 2}]', FMT)
    assert rows[0]["img"].shape == (2, 2)
    assert rows[0]["raw"] == b"abc"
    assert rows[1]["img"].size == 0
    assert rows[1]["n"] == 2


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[[[[[1]]]]]", "nests 5 levels deep, more than the limit of 4"),
        (b'{"img": [[1], [2, 3]]}', "column 'img': expected a rectangular nested list of numbers, got a ragged one"),
        (b'{"img": [true, "x"]}', "column 'img': expected a rectangular nested list of numbers, got strings"),
        (b'{"n": NaN}', "holds NaN"),
        (b'{"n": [1, {"m": 1e400}]}', "column 'n': holds a number too large for a float"),
        (b'{"raw": "!!"}', "column 'raw': expected base64 text for bytes, got '!!'"),
        (b"nope", "request body is not JSON"),
        (b"true", "expected a JSON object or a list of objects, got a bool"),
    ],
)
def test_decode_refuses_with_a_schema_error_naming_the_problem(body, words):
    with pytest.raises(cf.SchemaError) as info:
        decode_request(body, FMT)
    assert words in str(info.value)


def test_encode_writes_non_finite_floats_as_null():
    data = encode({"a": float("nan"), "b": np.array([1.0, np.inf]), "c": np.float32("-inf"), "d": b"\x00"})
    assert json.loads(data) == {"a": None, "b": [1.0, None], "c": None, "d": "AA=="}


def test_encode_table_and_decode_travel_to_a_worker_process():
    table = cf.Table.from_request({"img": np.ones(2), "raw": b"", "n": 1}, SCHEMA)
    assert json.loads(pickle.loads(pickle.dumps(encode_table))(table))["rows"][0]["img"] == [1.0, 1.0]
    assert pickle.loads(pickle.dumps(FMT)) == FMT


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (cf.SchemaError("bad"), 400),
        (cf.MissingKeyError("lookup 'k': key 'a' is not in the store"), 422),
        (cf.OperatorError("boom", "map 'f'"), 422),
        (cf.DeploymentError("deployment 'd' is closed"), 503),
        (cf.FlowError("call to a worker failed"), 503),
        (cf.FlowTimeoutError("late"), 504),
    ],
)
def test_error_reply_statuses(error, status):
    assert error_reply(error)[0] == status
    assert error_reply(error)[1]["error"] == str(error)


def test_overload_answers_429_with_retry_after_in_whole_seconds():
    status, body, headers = error_reply(cf.OverloadError("full", "s", 0.2))
    assert (status, headers) == (429, {"Retry-After": "1"})
    assert body == {"error": "full", "stage": "s", "retry_after": 0.2}
    assert error_reply(cf.OverloadError("full", "s", 4.01))[2] == {"Retry-After": "5"}
