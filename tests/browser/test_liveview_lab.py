"""The live deployment view in a real JupyterLab: tests/browser/liveview.ipynb driven by Chromium.

The notebook deploys a two-stage flow, shows the cluster and the deployment, opens
``cf.watch(dep)`` and sends traffic from a background thread. The tests check what a person
sees: the worker table, the snapshot, and the stage figures on the watched graph changing.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ERROR_OUTPUT, notebook_cell, run_all

NOTEBOOK = Path(__file__).resolve().parent / "liveview.ipynb"
RUN_ALL_TIMEOUT_MS = 180_000
UI_TIMEOUT_MS = 20_000
CHANGE_TIMEOUT = 30.0  # seconds for the watched figures to move while traffic runs

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(420)]


def _output(page: Any, source: str, exact: bool = False) -> Any:
    """The output area of the code cell whose source is, or starts with, ``source``."""
    return notebook_cell(page, NOTEBOOK, source, exact).locator(".jp-OutputArea-output")


@pytest.fixture(scope="module")
def ran(notebook_page: Any) -> Any:
    run_all(notebook_page.page, RUN_ALL_TIMEOUT_MS)
    return notebook_page


def test_no_error_outputs(ran):
    tracebacks = [t for t in ran.page.locator(ERROR_OUTPUT).all_inner_texts() if "Traceback" in t]
    assert not tracebacks, "error output in the notebook:\n" + "\n\n".join(tracebacks)
    outputs = "\n".join(ran.page.locator(".jp-OutputArea-output").all_inner_texts())
    for sign in ("Javascript Error", "Error displaying widget", "Could not create a view", "Failed to load model"):
        assert sign not in outputs


def test_cluster_view_lists_workers_with_tags_and_replicas(ran):
    table = _output(ran.page, "dep = cluster.deploy(").locator("table.cf-workers")
    table.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    text = table.inner_text()
    assert "GPU" in text
    assert "watched" in text  # the replicas' deployment/stage names
    assert table.locator("tr").count() == 3  # a header and two workers


def test_deployment_snapshot_shows_the_graph_and_points_to_watch(ran):
    output = _output(ran.page, "dep", exact=True)
    svg = output.locator("svg")
    svg.first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    assert svg.locator("g.node").count() >= 3
    assert "cf.watch(dep)" in output.inner_text()


def _calls(view: Any) -> list[int]:
    """Every 'N calls' figure drawn on the watched graph, in node order."""
    texts = view.locator(".widget-html-content svg g.node text").evaluate_all("ts => ts.map(t => t.textContent)")
    return [int(m.group(1)) for t in texts if (m := re.match(r"(\d+) calls,", t))]


def test_watched_figures_change_while_traffic_runs(ran):
    view = _output(ran.page, "view = cf.watch(dep").last  # after BokehJS loading
    graph = view.locator(".widget-html-content svg")
    graph.first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    box = graph.first.bounding_box()
    assert box, "the watched graph has no box on the page"
    assert min(box["width"], box["height"]) > 100
    before = _calls(view)
    assert len(before) == 2, f"calls per stage on the graph: {before}"
    deadline = time.monotonic() + CHANGE_TIMEOUT
    after = before
    while time.monotonic() < deadline and not all(a > b for a, b in zip(after, before, strict=True)):
        ran.page.wait_for_timeout(500)  # the view refreshes every 0.5 s
        after = _calls(view)
    assert all(a > b for a, b in zip(after, before, strict=True)), f"calls per stage: {before} -> {after}"
    assert "refreshing every 0.5 s" in view.inner_text()
    canvas = view.locator("canvas")  # the bokeh dashboard under the graph
    canvas.first.wait_for(state="attached", timeout=UI_TIMEOUT_MS)


def test_no_console_errors(ran):
    assert not ran.console, "console errors:\n" + "\n".join(ran.console)
    assert not ran.page_errors, "uncaught page errors:\n" + "\n".join(ran.page_errors)
