"""The OpenAPI 3.1 document of a served flow, and the small HTML page that shows it.

Pure functions of the flow's input and output schemas: :func:`spec` describes ``POST /predict``
with columns as they travel in the JSON body (an ``np.ndarray`` as a nested list of numbers, ``bytes``
as base64 text, ``None`` as ``null`` everywhere, a non-finite float answered as ``null``), every
status the endpoint answers, the probes and ``/metrics``; :func:`docs_page` renders it as one
self-contained page (no scripts, no CDN: it works offline).

Examples
--------
>>> import cloudflow_nb as cf
>>> flow = cf.Flow("double", x=int).map(lambda row: 2 * row["x"], names={"y": int})
>>> doc = spec(flow.name, flow.input_schema, flow.schema)
>>> doc["components"]["schemas"]["Row"]["properties"]["x"]
{'type': ['integer', 'null']}
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import numpy as np

from cloudflow_nb.table import QID, Schema, type_name

__all__ = ["docs_page", "example_row", "spec"]

_SCALARS: dict[type, str] = {
    int: "integer",
    float: "number",
    str: "string",
    bool: "boolean",
    list: "array",
    dict: "object",
}
_ERRORS = {  # what POST /predict answers besides 200
    "400": "the body is not JSON, nests too deep, holds NaN or Infinity, or does not fit the input schema",
    "401": "the endpoint has a token and the request did not bring it (`Authorization: Bearer <token>`)",
    "413": "the body is larger than the endpoint's limit",
    "415": "the body's Content-Type is not JSON",
    "422": "an operator failed (`operator` names it), or a lookup found no value for its key",
    "429": "a stage had no room, or too many large bodies were being decoded; retry after `Retry-After` seconds",
    "500": "a bug in the server",
    "503": "the deployment is closed, or the cluster could not serve the request",
    "504": "the request's deadline passed",
}


def column_schema(tp: type, answer: bool = False) -> dict[str, Any]:
    """The JSON schema of a column of type ``tp`` as it travels (``answer``: in a result, where a
    non-finite float is ``null`` and a value of another class is its ``repr``)."""
    if tp is np.ndarray:
        return {"oneOf": [{"$ref": "#/components/schemas/NDArray"}, {"type": "null"}]}
    if tp is bytes:
        return {"type": ["string", "null"], "contentEncoding": "base64"}
    if tp in _SCALARS:
        return {"type": [_SCALARS[tp], "null"]}
    if tp is object:
        return {}
    if answer:
        return {"type": ["string", "null"], "description": f"the repr of a {type_name(tp)}"}
    return {"description": f"a {type_name(tp)}: not something a JSON body can hold"}


def _row(schema: Schema, answer: bool) -> dict[str, Any]:
    columns = schema.user_columns()
    properties = {name: column_schema(tp, answer) for name, tp in columns.items()}
    if answer:
        properties = {QID: {"type": "integer", "description": "the row's position in the request"}, **properties}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def spec(name: str, inputs: Schema, outputs: Schema, token: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the flow ``name`` served by ``cf.serve`` (``token``: with a bearer token)."""
    error = {"$ref": "#/components/schemas/Error"}
    errors = {code: _response(when, error) for code, when in _ERRORS.items()}
    errors["429"]["headers"] = {"Retry-After": {"description": "whole seconds", "schema": {"type": "integer"}}}
    errors["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    predict: dict[str, Any] = {
        "summary": f"Run flow {name!r} on one row or a list of rows",
        "operationId": "predict",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"oneOf": [_ref("Row"), {"type": "array", "items": _ref("Row")}]},
                    "example": example_row(inputs),
                }
            },
        },
        "responses": {"200": _response("the result table, rows in request order", _ref("Result")), **errors},
    }
    metrics: dict[str, Any] = {
        "summary": "Per-stage figures in Prometheus text format",
        "operationId": "metrics",
        "responses": {
            "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
            "401": errors["401"],
        },
    }
    stats: dict[str, Any] = {
        "summary": "The deployment's figures as JSON",
        "operationId": "stats",
        "responses": {"200": _response("dep.stats()", {"type": "object"}), "401": errors["401"]},
    }
    if not token:
        for op in (predict, metrics, stats):
            op["responses"].pop("401")
    open_: dict[str, Any] = {"security": []} if token else {}
    probe = {"type": "object", "properties": {"flow": {"type": "string"}, "status": {"type": "string"}}}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": f"cloudflow flow {name!r}",
            "version": "1",
            "description": "Arrays travel as nested lists of numbers, bytes as base64 text; a nan or an "
            "infinity in a result is null. Every answer is JSON but /metrics and /docs; errors are "
            '{"error": "..."} (the Error schema), and so are the answers to an unknown path (404) or a '
            "method a path does not take (405, with Allow).",
        },
        "paths": {
            "/predict": {"post": predict},
            "/metrics": {"get": metrics},
            "/stats": {"get": stats},
            "/healthz": {
                "get": {
                    "summary": "Liveness: the process answers",
                    "operationId": "healthz",
                    **open_,
                    "responses": {"200": _response("alive", probe)},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: every stage has a live replica",
                    "operationId": "readyz",
                    **open_,
                    "responses": {"200": _response("ready", probe), "503": _response("not ready (why)", error)},
                }
            },
        },
        "components": {
            "schemas": {
                "Row": _row(inputs, answer=False),
                "ResultRow": _row(outputs, answer=True),
                "Result": {
                    "type": "object",
                    "properties": {
                        "columns": {"type": "array", "items": {"type": "string"}, "const": list(outputs.names)},
                        "rows": {"type": "array", "items": _ref("ResultRow")},
                    },
                    "required": ["columns", "rows"],
                },
                "NDArray": {
                    "description": "an array as a rectangular nested list of numbers (or bools)",
                    "type": "array",
                    "items": {"anyOf": [{"type": ["number", "boolean", "null"]}, _ref("NDArray")]},
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {"type": "string"},
                        "operator": {"type": "string", "description": "the operator that failed (422)"},
                        "stage": {"type": "string", "description": "the stage that had no room (429)"},
                        "retry_after": {"type": "number", "description": "seconds (429)"},
                    },
                    "required": ["error"],
                },
            }
        },
    }
    if token:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def example_row(schema: Schema) -> dict[str, Any]:
    """A request row of placeholder values, as JSON, for the flow's input ``schema``."""
    examples: dict[type, Any] = {
        int: 1,
        float: 0.5,
        str: "text",
        bool: True,
        list: [],
        dict: {},
        bytes: base64.b64encode(b"bytes").decode(),
        np.ndarray: [[0.0, 1.0], [2.0, 3.0]],
    }
    return {name: examples.get(tp) for name, tp in schema.user_columns().items()}


# -- the docs page ----------------------------------------------------------------------------------

_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{border-bottom:1px solid #ccc}code,pre{background:#f4f4f4;padding:.1rem .3rem}pre{padding:.6rem;overflow:auto}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}
.m{font-weight:bold;color:#05a}"""


def docs_page(doc: dict[str, Any], base: str = "") -> str:
    """A self-contained HTML page for the OpenAPI document ``doc`` (``base``: the server's URL, for curl lines)."""
    esc = html.escape
    info = doc["info"]
    auth = "security" in doc
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(info['title'])}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{esc(info['title'])}</h1><p>{esc(info['description'])}</p>",
        "<p>The machine-readable document: <a href='openapi.json'>openapi.json</a> (OpenAPI "
        f"{esc(doc['openapi'])}); feed it to a client generator.</p>",
    ]
    if auth:
        parts.append(
            "<p>Requests need <code>Authorization: Bearer &lt;token&gt;</code>, "
            "but <code>/healthz</code> and <code>/readyz</code>.</p>"
        )
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            parts.append(f"<h2><span class='m'>{method.upper()}</span> <code>{esc(path)}</code></h2>")
            parts.append(f"<p>{esc(op['summary'])}</p>")
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                example = json.dumps(body["example"])
                header = " -H 'Authorization: Bearer $TOKEN'" if auth else ""
                curl = f"curl -s {base}{path} -H 'Content-Type: application/json'{header} -d '{example}'"
                parts.append(f"<p>Example:</p><pre>{esc(curl)}</pre>")
            rows = "".join(
                f"<tr><td>{esc(code)}</td><td>{esc(answer['description'])}</td></tr>"
                for code, answer in op["responses"].items()
            )
            parts.append(f"<table><tr><th>status</th><th>when</th></tr>{rows}</table>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        parts.append(f"<h3>{esc(name)}</h3><pre>{esc(json.dumps(schema, indent=2))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
