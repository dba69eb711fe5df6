"""Hostile input against a real ``cf.serve`` over a real deployment, sent with plain-Python clients.

Every client mistake answers its 4xx with a JSON body that names the problem; nothing answers 5xx
but a closed deployment (503) and a missed deadline (504); a big body being decoded does not keep
small requests from being answered.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cloudflow_nb as cf

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

FUZZ_EXAMPLES = 200
CLIENT_TIMEOUT = 60


# -- the flow: a filter, a map and a dynamic lookup, each with a way to fail on purpose -------------


def keep(row):
    if row["n"] == 13:
        return np.array([True, False])  # not a bool: ambiguous, and refused
    return np.bool_(row["n"] != 0)


def summarize(row):
    n = row["n"]
    if n == 5:
        raise ValueError("five is right out")
    if n == 7:
        raise cf.OverloadError("stage 'summarize' is full", "summarize", 2.5)
    total = float("nan") if n == -1 else float(np.sum(row["img"]))
    return total, "absent" if n == 404 else "present"


def nap(row):
    time.sleep(row["x"])
    return row["x"]


@pytest.fixture(scope="module")
def cluster():
    with cf.LocalCluster(workers=1, gpu_workers=0, dashboard=False) as cluster:
        cluster.store["present"] = 1
        yield cluster


@pytest.fixture(scope="module")
def endpoint(cluster):
    flow = (
        cf.Flow("hostile", img=np.ndarray, raw=bytes, n=int)
        .filter(keep, name="keep")
        .map(summarize, names={"total": float, "key": str})
        .lookup("key", dynamic=True, into="found", type=int)
    )
    with cluster.deploy(flow) as dep, cf.serve(dep) as ep:
        yield ep


@pytest.fixture(scope="module")
def slow(cluster):
    """A deployment whose requests have 2 s, in front of a map that sleeps ``x`` seconds."""
    with cluster.deploy(cf.Flow("slow", x=float).map(nap, names={"y": float}), timeout=2) as dep, cf.serve(dep) as ep:
        yield ep


def send(ep, body, method="POST", path="/predict", headers=None):
    """``(status, headers, decoded JSON body)`` over ``http.client``; fails on a body that is not JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        assert resp.getheader("Content-Type") == "application/json"
        return resp.status, resp.headers, json.loads(resp.read())
    finally:
        conn.close()


def raw_exchange(ep, head: bytes, pieces=(), pause=0.0) -> tuple[int, dict]:
    """Send ``head`` then ``pieces`` (``pause`` s apart) on a raw socket; the status and JSON answer."""
    with socket.create_connection(("127.0.0.1", ep.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(head)
        for i, piece in enumerate(pieces):
            time.sleep(pause if i else 0)
            sock.sendall(piece)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head_text, _, body = data.partition(b"\r\n\r\n")
    return int(head_text.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 60


RAW = base64.b64encode(b"abc").decode()
GOOD = {"img": [[1, 2], [3, 4]], "raw": RAW, "n": 1}


def test_a_good_request_still_answers(endpoint):
    status, _, body = send(endpoint, GOOD)
    assert status == 200
    assert body["rows"][0]["total"] == 10.0
    assert body["rows"][0]["found"] == 1


# -- each client mistake: its status and what the message names -------------------------------------

MISTAKES = {
    "not json": (b"{not json", 400, ["not JSON"]),
    "bad utf-8": (b'{"img": "\xff\xfe"}', 400, ["not JSON"]),
    "empty body": (b"", 400, ["got null"]),
    "a number": (b"42", 400, ["expected a JSON object or a list of objects", "a number"]),
    "row not an object": (b"[1]", 400, ["row 0 must be a JSON object"]),
    "missing column": ({"img": [1], "n": 1}, 400, ["'raw'"]),
    "unknown column": ({**GOOD, "zap": 1}, 400, ["unknown column 'zap'"]),
    "reserved qid": ({**GOOD, "qid": 3}, 400, ["'qid'"]),
    "wrong type": ({**GOOD, "n": "one"}, 400, ["'n'"]),
    "ragged array": ({**GOOD, "img": [[1, 2], [3]]}, 400, ["column 'img'", "rectangular", "ragged"]),
    "strings in array": ({**GOOD, "img": ["a", "b"]}, 400, ["column 'img'", "numbers", "strings"]),
    "nulls in array": ({**GOOD, "img": [1, None]}, 400, ["column 'img'", "numbers", "null"]),
    "objects in array": ({**GOOD, "img": [{"a": 1}]}, 400, ["column 'img'", "numbers", "an object"]),
    "int beyond 64 bits": ({**GOOD, "img": [2**80, 1]}, 400, ["column 'img'", "numbers"]),
    "array not a list": ({**GOOD, "img": 3}, 400, ["'img'"]),
    "bad base64": ({**GOOD, "raw": "***"}, 400, ["column 'raw'", "base64"]),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, 400, ["nests 100000 levels deep", "limit of 32"]),
    "deep and unclosed": (b'{"img": ' + b"[" * 100_000, 400, ["nests 100001 levels deep"]),
    "NaN": (b'{"img": [NaN], "raw": "", "n": 1}', 400, ["NaN", "non-finite"]),
    "Infinity": (b'{"img": [1], "raw": "", "n": -Infinity}', 400, ["-Infinity", "non-finite"]),
    "float overflow in array": (b'{"img": [1e999], "raw": "", "n": 1}', 400, ["column 'img'", "too large"]),
    "float overflow in scalar": (b'{"img": [1], "raw": "", "n": 1e999}', 400, ["column 'n'", "too large"]),
    "huge integer": (b'{"img": [1], "raw": "", "n": ' + b"9" * 5000 + b"}", 400, ["not JSON"]),
    "failing operator": ({**GOOD, "n": 5}, 422, ["map 'summarize'", "five is right out"]),
    "filter not a bool": ({**GOOD, "n": 13}, 422, ["filter 'keep' must return a bool, got ndarray"]),
    "missing store key": ({**GOOD, "n": 404}, 422, ["'absent'"]),
}


@pytest.mark.parametrize("case", MISTAKES, ids=list(MISTAKES))
def test_each_mistake_answers_its_4xx_naming_the_problem(endpoint, case):
    body, expected, words = MISTAKES[case]
    status, _, answer = send(endpoint, body)
    assert status == expected, answer
    for word in words:
        assert word in answer["error"]


def test_an_overloaded_stage_answers_429_with_retry_after(endpoint):
    # The map raises cf.OverloadError itself; the router raises the same error when a stage is full.
    status, headers, body = send(endpoint, {**GOOD, "n": 7})
    assert status == 429
    assert headers["Retry-After"] == "3"  # 2.5 s, rounded up to whole seconds
    assert body["stage"] == "summarize"
    assert body["retry_after"] == 2.5


def test_a_nan_result_is_valid_json_null(endpoint):
    status, _, body = send(endpoint, {**GOOD, "n": -1})
    assert status == 200
    assert body["rows"][0]["total"] is None


def test_unknown_paths_and_methods_answer_json(endpoint):
    status, _, body = send(endpoint, b"", method="GET", path="/nope")
    assert status == 404
    assert "'/nope'" in body["error"]
    assert "POST /predict" in body["error"]
    status, headers, body = send(endpoint, b"", method="GET", path="/predict")
    assert status == 405
    assert headers["Allow"] == "POST"
    status, headers, body = send(endpoint, b"{}", method="PUT", path="/health")
    assert status == 405
    assert headers["Allow"] == "GET"


# -- bodies too large ---------------------------------------------------------------------------


def test_a_body_declared_too_large_answers_413_before_it_is_sent(endpoint):
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n"
    status, body = raw_exchange(endpoint, head)
    assert status == 413
    assert "limit of 67108864 bytes" in body["error"]


def test_a_120_mb_body_sent_whole_answers_413(endpoint):
    status, _, body = send(endpoint, b" " * (120 * 2**20))
    assert status == 413
    assert "larger than the limit" in body["error"]


def test_a_chunked_body_over_the_limit_answers_413(cluster):
    flow = cf.Flow("tiny", x=int).map(lambda row: row["x"], names="y")
    with cluster.deploy(flow) as dep, cf.serve(dep, max_body=1000) as ep:
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"%x\r\n%s\r\n" % (600, b" " * 600)
        status, body = raw_exchange(ep, head, [chunk, chunk, b"0\r\n\r\n"])
        assert status == 413
        assert "limit of 1000 bytes" in body["error"]
        assert send(ep, {"x": 1})[0] == 200


# -- deadlines ----------------------------------------------------------------------------------


def test_a_deadline_miss_answers_504(slow):
    status, _, body = send(slow, {"x": 4.0})
    assert status == 504
    assert "slow" in body["error"]


def test_the_deadline_counts_from_arrival(slow):
    request = b'{"x": 0.0}'
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(request)
    status, body = raw_exchange(slow, head, [request[:4], request[4:]], pause=2.5)  # the body takes 2.5 s of 2 s
    assert status == 504
    assert "passed while the request was read and decoded" in body["error"]


# -- big bodies and everyone else --------------------------------------------------------------


def test_small_requests_are_answered_while_a_big_body_is_decoded(endpoint):
    big = {**GOOD, "img": np.arange(1_500_000, dtype=float).reshape(1000, 1500).tolist()}
    answers = []
    sender = threading.Thread(target=lambda: answers.append(send(endpoint, big)))
    sender.start()
    smalls = [send(endpoint, GOOD)[0] for _ in range(20)]
    sender.join(120)
    assert smalls == [200] * 20
    assert answers[0][0] == 200
    assert answers[0][2]["rows"][0]["total"] == float(np.arange(1_500_000).sum())


def test_big_bodies_beyond_the_decoders_answer_429_until_one_is_free(cluster):
    flow = cf.Flow("few", x=list).map(lambda row: len(row["x"]), names={"n": int})
    big = {"x": list(range(1000))}
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    with cluster.deploy(flow) as dep, cf.serve(dep, offload_over=1000, decoders=1) as ep:
        holder = socket.create_connection(("127.0.0.1", ep.port), timeout=CLIENT_TIMEOUT)
        holder.sendall(head + b"[")  # a big body that does not come: it holds the one decoder slot
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while ep.decoders.busy < 1 and time.monotonic() < deadline:  # the server has read its head
            time.sleep(0.01)
        status, headers, body = send(ep, big)
        assert (status, headers["Retry-After"]) == (429, "1")
        assert "1 large request bodies are being decoded already" in body["error"]
        assert send(ep, {"x": [1]})[0] == 200  # small bodies need no slot
        holder.close()  # the client leaves: its slot is given back
        statuses = []
        for _ in range(50):
            statuses.append(send(ep, big)[0])
            if statuses[-1] == 200:
                break
            time.sleep(0.1)
        assert statuses[-1] == 200, statuses


def test_a_closed_deployment_answers_503(cluster):
    dep = cluster.deploy(cf.Flow("bye", x=int).map(lambda row: row["x"], names="y"))
    with cf.serve(dep) as ep:
        dep.close()
        status, _, body = send(ep, {"x": 1})
        assert status == 503
        assert "closed" in body["error"]


# -- fuzzing --------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
numbers = st.integers(-(2**70), 2**70) | st.floats()
arrays = st.lists(numbers, max_size=6) | st.lists(st.lists(numbers, min_size=2, max_size=2), max_size=3) | values
rows = st.fixed_dictionaries(
    {"img": arrays, "raw": st.sampled_from([RAW, "", "***"]) | st.text(max_size=8), "n": numbers | values},
    optional={"zap": values, "qid": st.integers()},
)
depths = st.integers(1, 3000).map(lambda d: b"[" * d + b"]" * d)
huge = st.integers(300, 5000).map(lambda k: b'{"img": [1], "raw": "", "n": 1' + b"0" * k + b"}")
bodies = st.one_of(
    values.map(lambda v: json.dumps(v).encode()),
    rows.map(lambda r: json.dumps(r).encode()),
    st.lists(rows, max_size=4).map(lambda r: json.dumps(r).encode()),
    depths,
    huge,
    st.binary(max_size=64),
)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_fuzzed_bodies_never_answer_5xx(endpoint, body):
    status, _, answer = send(endpoint, body)
    event(f"status {status}")  # pytest --hypothesis-show-statistics shows the mix
    assert status < 500, answer
    assert status == 200 or answer["error"]
