"""Graph renderings: golden DOT sources, stage styles, legend, and notebook display that never raises."""

from __future__ import annotations

import pytest
from snapshots import check, flows

import cloudflow_nb as cf
from cloudflow_nb import viz


@pytest.mark.parametrize(
    ("case", "build", "options"),
    [
        ("cascade", flows.cascade, cf.Optimize()),
        ("nmt", flows.nmt, cf.Optimize(compete=3)),
        ("recommender", flows.recommender, cf.Optimize()),
        ("router", flows.racing_router, cf.Optimize()),
    ],
)
def test_plan_graph_golden(case, build, options):
    check(f"plan_{case}.dot", build().show_graph(options=options).source)


def test_logical_graph_golden():
    check("logical_cascade.dot", flows.cascade().show_graph(optimized=False).source)


def test_compare_graph_golden():
    check("compare_cascade.dot", cf.compare(flows.cascade()).graph().source)


def node_line(source: str, node_id: str) -> str:
    return next(line for line in source.splitlines() if line.strip().startswith(f"{node_id} ["))


def test_stage_kinds_are_styled_differently():
    source = flows.nmt().show_graph(options=cf.Optimize(compete=3)).source
    assert "peripheries=2" in node_line(source, "s2")
    assert "box3d" in node_line(source, "s0")
    cascade = flows.cascade().show_graph().source
    assert 'fillcolor="#c8e6c9"' in node_line(cascade, "s1")
    assert 'fillcolor="#ffffff"' in node_line(cascade, "s0")
    router = flows.racing_router().show_graph().source
    assert "hexagon" in node_line(router, "s2")
    local = flows.recommender().show_graph().source
    assert "penwidth=2" in node_line(local, "s1")


def test_legend_lists_only_the_kinds_drawn():
    legend = node_line(flows.chain(2).show_graph().source, "legend")
    assert "CPU stage" in legend
    assert "GPU stage" in legend
    assert "racing" not in legend
    nmt = node_line(flows.nmt().show_graph(options=cf.Optimize(compete=3)).source, "legend")
    assert "racing replicas" in nmt
    assert "batched" in nmt


def test_fused_stages_are_named_from_their_parts_in_the_graph():
    assert 'label="m1-m2-m3\\nmap m1' in flows.chain(3).show_graph().source


def test_compare_graph_has_both_clusters_with_distinct_ids():
    source = cf.compare(flows.cascade()).graph().source
    assert "subgraph cluster_before {" in source
    assert "subgraph cluster_after {" in source
    assert "before_s5" in source
    assert "after_s3" in source


def test_text_fallback_without_dot(monkeypatch):
    monkeypatch.setattr(viz, "dot_available", lambda: False)
    bundle = cf.compare(flows.cascade())._repr_mimebundle_()
    assert list(bundle) == ["text/plain"]
    assert bundle["text/plain"].startswith("compare flow 'cascade': 6 stages -> 4 stages")
    assert viz.DOT_MISSING_HINT in bundle["text/plain"]
    assert flows.cascade().optimize()._repr_mimebundle_()["text/plain"].startswith("physical plan of flow 'cascade'")


def test_display_never_raises(monkeypatch):
    view = cf.compare(flows.cascade())

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(view, "graph", broken)
    monkeypatch.setattr(view, "text", broken)
    bundle = view._repr_mimebundle_()
    assert bundle == {
        "text/plain": "<cf.compare 'cascade': 6 stages -> 4 stages> (could not render: RuntimeError: boom)"
    }


@pytest.mark.exe
def test_compare_renders_svg_with_dot():
    if not viz.dot_available():
        pytest.skip("the Graphviz dot program is not installed")
    bundle = cf.compare(flows.cascade())._repr_mimebundle_()
    assert bundle["image/svg+xml"].lstrip().startswith(("<?xml", "<svg"))
    assert "cluster_after" in bundle["image/svg+xml"]
