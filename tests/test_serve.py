"""The HTTP endpoint of a deployment, over real loopback HTTP."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

import cloudflow_nb as cf

pytestmark = pytest.mark.cluster


def total(row):
    return float(row["img"].sum()), len(row["raw"])


def explode(row):
    if row["img"].size == 0:
        raise ValueError("empty image")
    return row["img"].size, 0


def call(url, body=None, method="POST"):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def endpoint(serving_cluster):
    flow = cf.Flow("http", img=np.ndarray, raw=bytes).map(total, names={"sum": float, "n": int})
    with serving_cluster.deploy(flow) as dep, cf.serve(dep) as ep:
        yield ep


def test_predict_one_row_and_many(endpoint):
    raw = base64.b64encode(b"abc").decode()
    status, body = call(endpoint.url + "/predict", {"img": [[1, 2], [3, 4]], "raw": raw})
    assert status == 200
    assert body["columns"] == ["qid", "img", "raw", "sum", "n"]
    assert body["rows"][0] == {"qid": 0, "img": [[1, 2], [3, 4]], "raw": raw, "sum": 10.0, "n": 3}
    status, body = call(endpoint.url + "/predict", [{"img": [1], "raw": raw}, {"img": [2, 2], "raw": raw}])
    assert status == 200
    assert [r["sum"] for r in body["rows"]] == [1.0, 4.0]


def test_bad_requests_answer_400_with_the_reason(endpoint):
    status, body = call(endpoint.url + "/predict", b"{not json")
    assert status == 400
    assert "not JSON" in body["error"]
    status, body = call(endpoint.url + "/predict", {"img": [1]})
    assert status == 400
    assert "'raw'" in body["error"]
    status, body = call(endpoint.url + "/predict", {"img": [1], "raw": "***"})
    assert status == 400
    assert "bytes" in body["error"]
    status, body = call(endpoint.url + "/predict", 42)
    assert status == 400


def test_operator_failure_answers_422(serving_cluster):
    flow = cf.Flow("boom", img=np.ndarray).map(explode, names={"size": int, "zero": int})
    with serving_cluster.deploy(flow) as dep, cf.serve(dep) as ep:
        status, body = call(ep.url + "/predict", {"img": []})
        assert status == 422
        assert "empty image" in body["error"]
        assert body["operator"] == "map 'explode'"
        assert call(ep.url + "/predict", {"img": [1, 2]})[0] == 200


def test_health_and_stats(endpoint):
    assert call(endpoint.url + "/health", method="GET") == (200, {"flow": "http", "status": "ok"})
    call(endpoint.url + "/predict", {"img": [1], "raw": ""})
    status, stats = call(endpoint.url + "/stats", method="GET")
    assert status == 200
    assert stats["requests"]["count"] == 1


def test_closed_deployment_reports_unhealthy(serving_cluster):
    flow = cf.Flow("bye", x=int).map(lambda r: r["x"], names="y")
    dep = serving_cluster.deploy(flow)
    with cf.serve(dep) as ep:
        dep.close()
        assert call(ep.url + "/health", method="GET")[0] == 503
        status, body = call(ep.url + "/predict", {"x": 1})
        assert status == 503
        assert "closed" in body["error"]


def test_big_bodies_decoded_in_a_worker_process_answer_the_same(serving_cluster):
    flow = cf.Flow("http", img=np.ndarray, raw=bytes).map(total, names={"sum": float, "n": int})
    request = [{"img": [[1.5, 2], [3, 4]], "raw": base64.b64encode(b"abc").decode()}, {"img": [], "raw": ""}]
    with serving_cluster.deploy(flow) as dep, cf.serve(dep) as inline, cf.serve(dep, offload_over=0) as offload:
        assert call(offload.url + "/predict", request) == call(inline.url + "/predict", request)
        status, body = call(offload.url + "/predict", {"img": [[1], [2, 3]], "raw": ""})
        assert status == 400
        assert "column 'img'" in body["error"]


def test_the_limits_are_settings(serving_cluster):
    flow = cf.Flow("limits", x=list).map(lambda row: len(row["x"]), names={"n": int})
    with serving_cluster.deploy(flow) as dep, cf.serve(dep, max_body=300, max_depth=3) as ep:
        assert call(ep.url + "/predict", {"x": [[1]]}) == (
            200,
            {"columns": ["qid", "x", "n"], "rows": [{"qid": 0, "x": [[1]], "n": 1}]},
        )
        status, body = call(ep.url + "/predict", {"x": [[[1]]]})
        assert (status, body["error"]) == (400, "request body nests 4 levels deep, more than the limit of 3")
        status, body = call(ep.url + "/predict", {"x": list(range(100))})
        assert (status, body["error"]) == (413, "request body is larger than the limit of 300 bytes")


@pytest.mark.parametrize(("limit", "value"), [("max_body", -1), ("max_depth", 2.5), ("decoders", 0)])
def test_bad_limits_are_refused(serving_cluster, limit, value):
    flow = cf.Flow("nolimit", x=int).map(lambda row: row["x"], names="y")
    with (
        serving_cluster.deploy(flow) as dep,
        pytest.raises(cf.SchemaError, match=f"serve: {limit} must be an integer of at least"),
    ):
        cf.serve(dep, **{limit: value})
