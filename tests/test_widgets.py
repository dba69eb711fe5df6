"""The optimizer panel, asserted headlessly through widget traits."""

from __future__ import annotations

import cloudflow_nb as cf


def double(row):
    return row["x"] * 2


def slow(row):
    return row["y"] + 1


def make_flow() -> cf.Flow:
    flow = cf.Flow("panel", x=int)
    return flow.map(double, names={"y": int}).map(slow, names={"z": int}, high_variance=True)


def test_panel_starts_from_the_given_options():
    panel = cf.explore(make_flow(), cf.Optimize(compete=3))
    assert panel.controls["compete"].value == 3
    assert panel.options() == cf.Optimize(compete=3)
    assert any(s.competitive and s.replicas == 3 for s in panel.plan.stages)


def test_toggling_fusion_changes_the_plan_and_its_text():
    panel = cf.explore(make_flow(), cf.Optimize(compete=1))
    fused = len(panel.plan.stages)
    panel.controls["fusion"].value = False
    assert len(panel.plan.stages) > fused
    assert "double" in panel.text.value
    assert "slow" in panel.text.value


def test_compete_slider_sets_racing_replicas():
    panel = cf.explore(make_flow())
    panel.controls["compete"].value = 4
    (racing,) = [s for s in panel.plan.stages if s.competitive]
    assert racing.replicas == 4


def test_pass_selector_stops_early():
    panel = cf.explore(make_flow())
    panel.controls["pass"].value = "logical"
    assert panel.plan.pass_name == "logical"
    assert len(panel.plan.stages) == 2


def test_bad_settings_show_an_error_and_keep_the_last_plan():
    panel = cf.explore(make_flow())
    panel.controls["max_batch_wait_ms"].value = -1.0  # clamped by the widget to its minimum
    assert panel.error.value == ""
    before = panel.plan
    panel.controls["compete"].min = 0
    panel.controls["compete"].value = 0
    assert "compete" in panel.error.value
    assert panel.plan is before


def test_graph_pane_shows_svg_or_the_install_hint(monkeypatch):
    panel = cf.explore(make_flow())
    assert "<svg" in panel.graph.value or "dot" in panel.graph.value
    monkeypatch.setattr("cloudflow_nb.widgets.dot_available", lambda: False)
    panel.controls["fusion"].value = False
    assert "apt-get install graphviz" in panel.graph.value


def test_repr_is_a_widget_bundle():
    bundle = cf.explore(make_flow())._repr_mimebundle_()
    assert "text/plain" in bundle


def test_hedge_after_is_typed_as_text():
    panel = cf.explore(make_flow())
    panel.controls["hedge_after"].value = "p90"
    (hedged,) = [s for s in panel.plan.stages if s.hedge_after is not None]
    assert hedged.hedge_after == "p90"
    panel.controls["hedge_after"].value = "25"
    assert panel.options().hedge_after == 25.0
    panel.controls["hedge_after"].value = "soon"
    assert "hedge_after must be None, a percentile" in panel.error.value
