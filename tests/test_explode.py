"""``explode``: one row per element of a list column, on both engines."""

from __future__ import annotations

import pytest

import cloudflow_nb as cf

FLOW = cf.Flow("boxes", text=str, tag=int)
SPLIT = FLOW.map(lambda row: [(w, len(w)) for w in row["text"].split()], names={"words": list}, name="split")


def test_one_row_per_element_with_fresh_qids(run):
    flow = SPLIT.explode("words", names={"word": str, "size": int})
    out = run(flow, [{"text": "a bb", "tag": 1}, {"text": "ccc", "tag": 2}])
    assert out.columns == ("qid", "text", "tag", "word", "size")
    expected = [(0, 1, "a", 1), (1, 1, "bb", 2), (2, 2, "ccc", 3)]
    assert [(r["qid"], r["tag"], r["word"], r["size"]) for r in out] == expected


def test_keep_drops_the_other_columns_and_branches_rejoin_per_element(run):
    rows = SPLIT.explode("words", names={"word": str, "size": int}, keep=["tag"])
    long = rows.filter(lambda row: row["size"] > 1, name="long").map(lambda row: row["word"].upper(), names={"up": str})
    out = run(rows.join(long, how="left"), {"text": "a bb ccc", "tag": 7})
    assert out.columns == ("qid", "tag", "word", "size", "up")
    assert [(r["word"], r["up"]) for r in out] == [("a", None), ("bb", "BB"), ("ccc", "CCC")]


def test_empty_and_none_give_no_rows():
    source = cf.Flow("empty", items=object)
    flow = source.explode("items", names="item")
    assert len(flow.run([{"items": []}, {"items": ()}])) == 0
    assert [r["item"] for r in flow.run({"items": (1, 2)})] == [1, 2]
    nothing = source.map(lambda row: None, names="items", name="none").explode("items", names="item")
    assert len(nothing.run({"items": [1]})) == 0


def test_dict_elements_and_one_name():
    flow = cf.Flow("dicts", items=list)
    assert [r["n"] for r in flow.explode("items", names={"n": int}).run({"items": [4, 5]})] == [4, 5]
    out = flow.explode("items", names=["a", "b"]).run({"items": [{"a": 1, "b": 2}]})
    assert (out[0]["a"], out[0]["b"]) == (1, 2)


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: SPLIT.explode("nope", names="w"), ["explode", "'nope'", "columns:"]),
        (lambda: SPLIT.explode("words", names=[]), ["explode 'words'", "at least one"]),
        (lambda: SPLIT.explode("words", names="w", keep="tag"), ["keep", "'tag'", "list"]),
        (lambda: SPLIT.explode("words", names="w", keep=["qid"]), ["cannot keep", "'qid'"]),
        (lambda: SPLIT.explode("words", names="w", keep=["missing"]), ["keep", "'missing'"]),
    ],
)
def test_build_errors_name_the_operator_and_column(build, words):
    with pytest.raises(cf.SchemaError) as info:
        build()
    for word in words:
        assert word in str(info.value)


def test_bad_values_fail_the_request_with_a_flow_error():
    flow = cf.Flow("bad", items=object)
    with pytest.raises(cf.SchemaError, match=r"explode 'items': column 'items' must hold a list.*got int"):
        flow.explode("items", names="x").run({"items": 3})
    with pytest.raises(cf.FlowError, match=r"explode 'items' must return 2 values"):
        flow.explode("items", names=["x", "y"]).run({"items": [(1, 2, 3)]})
    with pytest.raises(cf.FlowError, match=r"column 'x', expected int"):
        flow.explode("items", names={"x": int}).run({"items": ["s"]})


def test_explain_shows_the_whole_new_schema():
    text = SPLIT.explode("words", names={"word": str}, keep=()).explain(optimized=False)
    assert "explode words (n1)  -> qid: int, word: str" in text
