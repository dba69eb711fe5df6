"""Renderings of the logical plan: golden files, labels, escaping, and notebook reprs that never raise.

Golden files live in ``tests/snapshots/core/``; regenerate them with ``CFNB_UPDATE_SNAPSHOTS=1``.
The optimized renderings belong to the optimizer's tests (``tests/snapshots/optimize``).
"""

from __future__ import annotations

import functools
import re
import shutil
import stat

import numpy as np
import pytest
from snapshots import check

import cloudflow_nb as cf
from cloudflow_nb import viz
from cloudflow_nb.labels import callable_label

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="needs the Graphviz dot program")


# -- named module-level functions, so the golden files are stable -------------------------------------


def preprocess(row):
    return row["img"] / 255.0


class ResNet:
    def __call__(self, rows):
        return [("cat", 0.8) for _ in rows]


def low_confidence(row):
    return row["conf"] < 0.85


class Inception:
    def __call__(self, row):
        return "dog", 0.9


def pick_best(row):
    return row["label2"] if row["conf2"] is not None and row["conf2"] > row["conf"] else row["label"]


def model_a(row):
    return 0.1


def model_b(row):
    return 0.2


def model_c(row):
    return 0.3


def score(row):
    return float(np.dot(row["user_vec"], row["item_vec"]))


def translate_fast(row):
    return row["text"].upper()


def translate_slow(row):
    return row["text"].title()


def cascade() -> cf.Flow:
    flow = cf.Flow("cascade", img=np.ndarray)
    pre = flow.map(preprocess, names={"img": np.ndarray})
    top = pre.map(ResNet, names={"label": str, "conf": float}, gpu=True, batching=True)
    low = top.filter(low_confidence).map(Inception, names={"label2": str, "conf2": float}, gpu=True)
    return top.join(low, how="left").map(pick_best, names={"label": str})


def ensemble() -> cf.Flow:
    flow = cf.Flow("ensemble", x=float)
    models = [
        flow.map(fn, names={"score": float}, name=f"model {i}") for i, fn in enumerate((model_a, model_b, model_c))
    ]
    return models[0].union(*models[1:]).groupby("qid").agg("max", "score")


def recommender() -> cf.Flow:
    flow = cf.Flow("recommender", user=str, item=str)
    users = flow.lookup("user", dynamic=True, into="user_vec", type=np.ndarray)
    items = users.lookup("item", dynamic=True, into="item_vec", default=None)
    scored = items.lookup("weights").map(score, names={"score": float})
    return scored.groupby("user").agg("mean", "score")


def short_text(row):
    return len(row["text"]) < 20


def translation() -> cf.Flow:
    flow = cf.Flow("translation", text=str)
    fast = flow.map(translate_fast, names={"out": str}, high_variance=True)
    slow = flow.map(translate_slow, names={"out": str})
    return fast.anyof(slow).join(flow.filter(short_text), on="text", how="outer")


FLOWS = {"cascade": cascade, "ensemble": ensemble, "recommender": recommender, "translation": translation}


@pytest.mark.parametrize("name", list(FLOWS))
def test_explain_logical_golden(name):
    check(f"{name}.explain.txt", FLOWS[name]().explain(optimized=False), folder="core")


@pytest.mark.parametrize("name", list(FLOWS))
def test_logical_dot_golden(name):
    check(f"{name}.dot", FLOWS[name]().show_graph(optimized=False).source, folder="core")


@pytest.mark.parametrize("name", list(FLOWS))
def test_renderings_are_byte_identical_across_builds(name):
    a, b = FLOWS[name](), FLOWS[name]()
    assert a.explain(optimized=False) == b.explain(optimized=False)
    assert a.show_graph(optimized=False).source == b.show_graph(optimized=False).source


def test_explain_logical_lists_operators_in_dependency_order():
    lines = cascade().explain(optimized=False).splitlines()
    assert lines[0] == "logical plan of flow 'cascade'"
    assert lines[1].startswith("  n0 = source 'cascade'")
    kinds = [re.match(r"\s+n\d+ = (\w+)", line).group(1) for line in lines[1:-1]]
    assert kinds == ["source", "map", "map", "filter", "map", "join", "map"]
    assert lines[-1] == "output: qid: int, img: ndarray, label: str, conf: float, label2: str, conf2: float"


# -- labels ---------------------------------------------------------------------------------------------


def test_callable_labels():
    assert callable_label(preprocess) == "preprocess"
    assert callable_label(ResNet) == "ResNet"
    assert callable_label(Inception()) == "Inception"
    assert callable_label(functools.partial(functools.partial(preprocess))) == "preprocess"
    fn = lambda row: row  # noqa: E731
    assert callable_label(fn) == f"<lambda at test_render.py:{fn.__code__.co_firstlineno}>"


def test_lambda_from_a_notebook_cell_is_labelled_cell():
    fn = eval(compile("lambda row: 1", "/tmp/ipykernel_4242/3141592.py", "eval"))
    assert callable_label(fn) == "<lambda at cell:1>"


def test_operator_name_overrides_the_function_name():
    flow = cf.Flow("f", x=int).map(preprocess, names="y", name="normalize")
    assert "map normalize" in flow.explain(optimized=False)
    assert "normalize" in flow.show_graph(optimized=False).source
    assert "preprocess" not in flow.show_graph(optimized=False).source


def lambda_flow() -> tuple[cf.Flow, str]:
    fn = lambda row: row["x"] + 1  # noqa: E731
    label = f"<lambda at test_render.py:{fn.__code__.co_firstlineno}>"
    return cf.Flow("lam", x=int).map(fn, names={"y": int}), label


def test_lambdas_are_labelled_with_file_and_line():
    flow, label = lambda_flow()
    assert f"map {label}" in flow.explain(optimized=False)
    assert f"\\n{label}\\n" in flow.show_graph(optimized=False).source


@needs_dot
@pytest.mark.exe
def test_lambda_label_renders_with_dot():
    flow, label = lambda_flow()
    svg = flow.show_graph(optimized=False).pipe(format="svg", encoding="utf-8")
    escaped = label.replace("<", "&lt;").replace(">", "&gt;")
    assert f">{escaped}</text>" in svg


@needs_dot
@pytest.mark.exe
def test_awkward_names_are_escaped_for_graphviz():
    awkward = ['quote " inside', "back\\slash", "<b>html</b>", "{record|like}", "new\nline"]
    flow = cf.Flow('<weird "flow">', x=int)
    for i, name in enumerate(awkward):
        flow = flow.map(preprocess, names={f"c{i}": object}, name=name)
    svg = flow.show_graph(optimized=False).pipe(format="svg", encoding="utf-8")
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert "&lt;weird &quot;flow&quot;&gt;" in texts
    assert "quote &quot; inside" in texts
    assert "back\\slash" in texts
    assert "&lt;b&gt;html&lt;/b&gt;" in texts
    assert "{record|like}" in texts


@needs_dot
@pytest.mark.exe
@pytest.mark.parametrize("name", list(FLOWS))
def test_logical_graphs_render_with_dot(name):
    svg = FLOWS[name]().show_graph(optimized=False).pipe(format="svg", encoding="utf-8")
    assert svg.lstrip().startswith("<?xml") or "<svg" in svg


# -- notebook reprs -----------------------------------------------------------------------------------


@pytest.fixture
def no_dot(monkeypatch, tmp_path):
    """A PATH without the ``dot`` program."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("dot") is None


@pytest.fixture
def broken_dot(monkeypatch, tmp_path):
    """A ``dot`` on PATH that always fails."""
    fake = tmp_path / "dot"
    fake.write_text("#!/bin/sh\necho 'dot: broken install' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path))


def test_flow_repr_without_dot_is_text_with_a_hint(no_dot):
    flow = cascade()
    bundle = flow._repr_mimebundle_(include=None, exclude=None)
    assert set(bundle) == {"text/plain"}
    text = bundle["text/plain"]
    assert flow.explain(optimized=False) in text
    assert viz.DOT_MISSING_HINT in text
    assert "apt-get install graphviz" in text


def test_flow_repr_without_dot_via_which(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    bundle = cascade()._repr_mimebundle_()
    assert "image/svg+xml" not in bundle
    assert viz.DOT_MISSING_HINT in bundle["text/plain"]


def test_flow_repr_with_a_broken_dot_falls_back_to_text(broken_dot):
    flow = cascade()
    bundle = flow._repr_mimebundle_()
    assert "image/svg+xml" not in bundle
    assert flow.explain(optimized=False) in bundle["text/plain"]


@needs_dot
@pytest.mark.exe
def test_flow_repr_with_dot_is_svg():
    flow = cascade()
    bundle = flow._repr_mimebundle_()
    assert "<svg" in bundle["image/svg+xml"]
    assert bundle["text/plain"] == repr(flow)


def test_repr_of_a_broken_flow_never_raises():
    broken = cf.Flow._from_node(None)  # type: ignore[arg-type]
    assert repr(broken) == "<cf.Flow>"
    bundle = broken._repr_mimebundle_()
    assert set(bundle) == {"text/plain"}
    assert bundle["text/plain"].startswith("<cf.Flow>")


def test_repr_when_the_graph_builder_fails(monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("graph builder bug")

    monkeypatch.setattr(viz, "logical_graph", explode)
    flow = cascade()
    bundle = flow._repr_mimebundle_()
    assert "image/svg+xml" not in bundle
    assert "cascade" in bundle["text/plain"]


def test_repr_when_every_renderer_fails(monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("renderer bug")

    monkeypatch.setattr(viz, "logical_graph", explode)
    monkeypatch.setattr("cloudflow_nb.explain.explain_logical", explode)
    bundle = cascade()._repr_mimebundle_()
    assert set(bundle) == {"text/plain"}
    assert bundle["text/plain"].startswith("<cf.Flow 'cascade'")
    assert "renderer bug" in bundle["text/plain"]


def test_mimebundle_helper_never_raises(no_dot):
    def fail():
        raise ValueError("nope")

    bundle = viz.mimebundle(fail, fail, "<short>")
    assert bundle == {"text/plain": "<short> (could not render: ValueError: nope)"}
