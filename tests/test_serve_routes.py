"""The served flow's standard routes over real loopback HTTP: OpenAPI, docs, metrics, probes, token."""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

import cloudflow_nb as cf

pytestmark = pytest.mark.cluster

TOKEN = "s3cret-token"


def measure(row):
    if row["n"] < 0:
        raise ValueError("negative n")
    return float(row["img"].sum()) * row["n"], len(row["raw"])


def get(url, headers=None, data=None, method=None):
    """``(status, headers, body bytes)``; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def post_json(url, body, headers=None):
    return get(url, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode())


@pytest.fixture(scope="module")
def deployment(serving_cluster):
    flow = cf.Flow("measure", img=np.ndarray, raw=bytes, n=int).map(measure, names={"total": float, "size": int})
    with serving_cluster.deploy(flow) as dep:
        yield dep


@pytest.fixture
def endpoint(deployment):
    with cf.serve(deployment) as ep:
        yield ep


def value_for(schema, components):
    """A JSON value fitting a column's schema, chosen from the schema alone (what a generated client does)."""
    if "oneOf" in schema:
        return value_for(schema["oneOf"][0], components)
    if "$ref" in schema:
        return value_for(components[schema["$ref"].rsplit("/", 1)[1]], components)
    kind = schema["type"][0] if isinstance(schema["type"], list) else schema["type"]
    if kind == "array":
        return [[1.0, 2.0], [3.0, 4.0]]
    if kind == "string":
        return base64.b64encode(b"abc").decode() if schema.get("contentEncoding") == "base64" else "text"
    return {"integer": 2, "number": 0.5, "boolean": True, "object": {}}[kind]


def test_a_client_built_from_the_openapi_document_alone_gets_its_answer(endpoint):
    status, headers, body = get(endpoint.url + "/openapi.json")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    validate(doc)
    ((path, ops),) = [(p, ops) for p, ops in doc["paths"].items() if "post" in ops]
    components = doc["components"]["schemas"]
    media = next(iter(ops["post"]["requestBody"]["content"]))
    request_ref = ops["post"]["requestBody"]["content"][media]["schema"]["oneOf"][0]["$ref"]
    row_schema = components[request_ref.rsplit("/", 1)[1]]
    row = {name: value_for(s, components) for name, s in row_schema["properties"].items()}
    status, _, body = get(endpoint.url + path, {"Content-Type": media}, json.dumps(row).encode())
    assert status == 200
    answer = json.loads(body)
    assert answer["columns"] == doc["components"]["schemas"]["Result"]["properties"]["columns"]["const"]
    assert answer["rows"][0]["total"] == 20.0
    assert answer["rows"][0]["size"] == 3


def test_the_docs_page_is_html_made_from_the_document(endpoint):
    status, headers, body = get(endpoint.url + "/docs")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "POST</span> <code>/predict</code>" in page
    assert f"curl -s {endpoint.url}/predict" in page


def test_metrics_count_requests_errors_and_http_answers(deployment):
    with cf.serve(deployment) as ep:
        good = {"img": [1, 2], "raw": "", "n": 1}
        for _ in range(3):
            assert post_json(ep.url + "/predict", good)[0] == 200
        assert post_json(ep.url + "/predict", {**good, "n": -1})[0] == 422
        assert post_json(ep.url + "/predict", {"img": [1]})[0] == 400
        status, headers, body = get(ep.url + "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
    (stage,) = deployment.stats()["stages"]
    key = (("flow", "measure"), ("stage", stage))
    assert samples["cloudflow_up", (("flow", "measure"),)] == 1
    assert samples["cloudflow_stage_calls_total", key] >= 4
    assert samples["cloudflow_stage_errors_total", (*key[:1], ("kind", "OperatorError"), key[1])] >= 1
    assert samples["cloudflow_stage_latency_seconds_count", key] == samples["cloudflow_stage_calls_total", key]
    placed = [v for (name, labels), v in samples.items() if name == "cloudflow_stage_replicas"]
    assert sum(placed) >= 1
    assert samples["cloudflow_http_requests_total", (("path", "/predict"), ("status", "200"))] == 3
    assert samples["cloudflow_http_requests_total", (("path", "/predict"), ("status", "422"))] == 1
    assert samples["cloudflow_http_requests_total", (("path", "/predict"), ("status", "400"))] == 1


def test_liveness_and_readiness(serving_cluster, endpoint):
    status, _, body = get(endpoint.url + "/healthz")
    assert (status, json.loads(body)) == (200, {"flow": "measure", "status": "alive"})
    status, _, body = get(endpoint.url + "/readyz")
    assert (status, json.loads(body)) == (200, {"flow": "measure", "status": "ready"})
    assert get(endpoint.url + "/health")[0] == 200  # the older route still answers
    dep = serving_cluster.deploy(cf.Flow("brief", x=int).map(lambda row: row["x"], names="y"))
    with cf.serve(dep) as ep:
        dep.close()
        status, _, body = get(ep.url + "/readyz")
        assert status == 503
        assert json.loads(body)["status"] == "not ready"
        assert "closed" in json.loads(body)["error"]
        assert get(ep.url + "/healthz")[0] == 200
        text = get(ep.url + "/metrics")[2].decode()
        assert 'cloudflow_up{flow="brief"} 0.0' in text


def test_a_token_guards_predictions_metrics_and_stats_only(deployment):
    good = {"img": [1], "raw": "", "n": 1}
    with cf.serve(deployment, token=TOKEN) as ep:
        for path in ("/predict", "/metrics", "/stats"):
            data = json.dumps(good).encode() if path == "/predict" else None
            wrong = ("Bearer wrong", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer")
            for headers in ({}, *({"Authorization": value} for value in wrong)):
                status, answer_headers, body = get(ep.url + path, headers, data)
                assert status == 401, (path, headers)
                assert answer_headers["WWW-Authenticate"].startswith("Bearer")
                assert "Authorization: Bearer <token>" in json.loads(body)["error"]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert post_json(ep.url + "/predict", good, auth)[0] == 200
        assert post_json(ep.url + "/predict", good, {"Authorization": f"bearer  {TOKEN}"})[0] == 200
        assert get(ep.url + "/metrics", auth)[0] == 200
        assert get(ep.url + "/stats", auth)[0] == 200
        for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
            assert get(ep.url + path)[0] == 200, path
        doc = json.loads(get(ep.url + "/openapi.json")[2])
        assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


def test_an_unauthorized_body_is_answered_401_before_it_is_sent(deployment):
    with cf.serve(deployment, token=TOKEN) as ep:
        conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=30)
        try:
            conn.putrequest("POST", "/predict")
            conn.putheader("Content-Length", str(50 * 2**20))
            conn.endheaders()  # the 50 MB body is never sent: the answer must not wait for it
            response = conn.getresponse()
            assert response.status == 401
            assert "Bearer" in json.loads(response.read())["error"]
        finally:
            conn.close()


@pytest.mark.parametrize("token", ["", "two words", "caf\u00e9", 42])
def test_bad_tokens_are_refused(deployment, token):
    with pytest.raises(cf.SchemaError, match="serve: token must be non-empty printable ASCII"):
        cf.serve(deployment, token=token)


def test_paths_match_exactly(endpoint):
    assert get(endpoint.url + "/openapiXjson")[0] == 404


def test_a_body_that_is_not_json_answers_415(endpoint):
    status, _, body = get(endpoint.url + "/predict", {"Content-Type": "application/x-www-form-urlencoded"}, b"n=1")
    assert status == 415
    assert "application/json" in json.loads(body)["error"]
    good = json.dumps({"img": [1], "raw": "", "n": 1}).encode()
    for kind in ("application/json; charset=utf-8", "application/vnd.api+json"):
        assert get(endpoint.url + "/predict", {"Content-Type": kind}, good)[0] == 200, kind
