"""The live dashboard on a real deployment, asserted through its bokeh data sources."""

from __future__ import annotations

import time

import pytest

import cloudflow_nb as cf

pytestmark = pytest.mark.cluster


def inc(row):
    return row["x"] + 1


def twice(row):
    return row["y"] * 2


@pytest.fixture
def deployment(serving_cluster):
    flow = cf.Flow("dash", x=int).map(inc, names={"y": int}).filter(lambda r: r["y"] > 0)
    flow = flow.map(twice, names={"z": int})
    with serving_cluster.deploy(flow, optimize=False) as dep:
        yield dep


def test_refresh_streams_stage_and_request_figures(deployment):
    dash = cf.Dashboard(deployment)
    assert set(dash.sources) == {"requests", *deployment.stats()["stages"]}
    for x in range(5):
        deployment.predict({"x": x})
    dash.refresh()
    for x in range(5):
        deployment.predict({"x": x})
    stats = dash.refresh()
    requests = dash.sources["requests"].data
    assert len(requests["t"]) == 2
    assert requests["p50"][-1] > 0
    assert requests["rate"][-1] > 0
    assert stats["requests"]["count"] == 10
    for name in stats["stages"]:
        assert len(dash.sources[name].data["p50"]) == 2


def test_background_refresh_stops_cleanly(deployment):
    dash = cf.dashboard(deployment, interval=0.05)
    deployment.predict({"x": 1})
    deadline = time.monotonic() + 10
    while len(dash.sources["requests"].data["t"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    dash.stop()
    assert len(dash.sources["requests"].data["t"]) >= 2
    samples = len(dash.sources["requests"].data["t"])
    time.sleep(0.2)
    assert len(dash.sources["requests"].data["t"]) == samples


def test_notebook_view_is_a_bokeh_widget(deployment):
    dash = cf.Dashboard(deployment)
    assert type(dash.widget).__name__ == "BokehModel"
    assert "text/plain" in dash._repr_mimebundle_()
