"""The OpenAPI document and docs page of a served flow, built from its schemas (no server)."""

from __future__ import annotations

import base64
import re

import jsonschema
import numpy as np
import pytest
from openapi_spec_validator import validate

import cloudflow_nb as cf
from cloudflow_nb.openapi import docs_page, example_row, spec


def flow():
    return cf.Flow("kinds", img=np.ndarray, raw=bytes, n=int, w=float, s=str, b=bool, anything=object).map(
        lambda row: (row["img"], len(row["raw"])), names={"out": np.ndarray, "size": int}
    )


def validator(doc, name):
    """Validate instances against ``#/components/schemas/<name>`` of ``doc`` (JSON Schema 2020-12)."""
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


@pytest.mark.parametrize("token", [False, True])
def test_the_document_is_valid_openapi_3_1(token):
    f = flow()
    doc = spec(f.name, f.input_schema, f.schema, token=token)
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert ("securitySchemes" in doc["components"]) is token
    assert doc["paths"]["/healthz"]["get"].get("security", []) == []


def test_every_status_the_endpoint_answers_is_described():
    f = flow()
    statuses = set(spec(f.name, f.input_schema, f.schema, token=True)["paths"]["/predict"]["post"]["responses"])
    assert statuses == {"200", "400", "401", "413", "415", "422", "429", "500", "503", "504"}
    assert "401" not in spec(f.name, f.input_schema, f.schema)["paths"]["/predict"]["post"]["responses"]


def test_columns_are_described_as_they_travel():
    f = flow()
    doc = spec(f.name, f.input_schema, f.schema)
    row = validator(doc, "Row")
    good = {"img": [[1, 2.5], [3, 4]], "raw": base64.b64encode(b"x").decode(), "n": 1, "w": 2, "s": "a", "b": True}
    row.validate({**good, "anything": {"free": "form"}})
    row.validate(dict.fromkeys([*good, "anything"]))  # None is a valid value of every column
    for bad in ({"img": "text"}, {"img": [["a"]]}, {"n": 1.5}, {"raw": 3}, {"zap": 1}):
        assert not row.is_valid({**good, "anything": 1, **bad}), bad
    assert not row.is_valid({"img": [1]})  # columns missing
    result = validator(doc, "Result")
    rows = [{"qid": 0, **good, "anything": 1, "out": [1.0, None], "size": 1}]
    result.validate({"columns": list(f.columns), "rows": rows})
    assert not result.is_valid({"columns": list(f.columns), "rows": [{**rows[0], "qid": None}]})


def test_the_example_request_fits_the_schema():
    f = cf.Flow("ex", img=np.ndarray, raw=bytes, n=int, w=float, s=str, b=bool)
    doc = spec(f.name, f.input_schema, f.schema)
    example = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert example == example_row(f.input_schema)
    validator(doc, "Row").validate(example)
    assert f.run({**example, "img": np.array(example["img"]), "raw": b"bytes"}).columns == f.columns


def test_the_docs_page_is_self_contained_and_escaped():
    f = cf.Flow("<b>&", x=int).map(lambda row: row["x"], names={"y": int})
    page = docs_page(spec(f.name, f.input_schema, f.schema, token=True), "http://127.0.0.1:1")
    assert "<b>&" not in page
    assert "&lt;b&gt;&amp;" in page
    assert "<script" not in page
    assert not re.search(r"(src|href)=['\"]?https?:", page)  # nothing fetched from elsewhere
    assert "curl -s http://127.0.0.1:1/predict" in page
    assert "Authorization: Bearer" in page
    assert "openapi.json" in page
