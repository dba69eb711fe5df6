"""notebooks/serving.ipynb in a real JupyterLab, driven by headless Chromium: what a person sees.

One JupyterLab server and one browser for the module (see conftest.py). The tests run in file
order on the same page: Run All first, then checks of the rendered outputs, a click on the
optimizer panel, and a full-page screenshot (its path is printed; set CLOUDFLOW_NB_SCREENSHOT
to choose it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ERROR_OUTPUT, notebook_cell, run_all

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "serving.ipynb"
RUN_ALL_TIMEOUT_MS = 180_000
UI_TIMEOUT_MS = 20_000

# The notebook_page fixture (conftest.py) skips every test, with the reason, when Chromium,
# playwright, jupyterlab or Graphviz is missing.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.timeout(420),  # a safety net: the module normally takes 40-60 s
]

# Console errors a person never sees and that do not come from our outputs, matched by substring.
HARMLESS_CONSOLE_ERRORS: tuple[str, ...] = ()


def _cell(page: Any, source: str, exact: bool = False) -> Any:
    """The serving notebook's cell whose source is, or starts with, ``source``."""
    return notebook_cell(page, NOTEBOOK, source, exact)


def _stage_count(explain: str) -> tuple[int, int]:
    """(stages the header announces, stage lines listed) of a ``Plan.explain()`` text."""
    header = re.search(r"\((\d+) stages?,", explain)
    assert header, f"no stage count in the panel's plan text:\n{explain}"
    listed = len(re.findall(r"^\s+s\d+ ", explain, flags=re.MULTILINE))
    return int(header.group(1)), listed


@pytest.fixture(scope="module")
def ran(notebook_page: Any) -> Any:
    """Run All Cells through the menu and wait until the last cell has its execution count."""
    run_all(notebook_page.page, RUN_ALL_TIMEOUT_MS)
    return notebook_page


def test_no_error_outputs(ran):
    page = ran.page
    tracebacks = [t for t in page.locator(ERROR_OUTPUT).all_inner_texts() if "Traceback" in t]
    assert not tracebacks, "error output in the notebook:\n" + "\n\n".join(tracebacks)
    prompts = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").all_inner_texts()
    assert all(re.search(r"\[\d+\]", p) for p in prompts), f"cells left unexecuted: {prompts}"
    # failures a person would see inside outputs even without a traceback
    outputs = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
    for sign in ("Javascript Error", "Error displaying widget", "Could not create a view", "Failed to load model"):
        assert sign not in outputs


@pytest.mark.parametrize(
    ("cell", "title"),
    [(("flow = cascade_flow", False), "the flow graph"), (("cf.compare(flow)", True), "the compare view")],
    ids=["flow", "compare"],
)
def test_graphs_render_as_svg_images(ran, cell, title):
    # an execute_result's .jp-OutputArea-output is itself the .jp-RenderedSVG that holds the <img>
    img = _cell(ran.page, *cell).locator(".jp-OutputArea .jp-RenderedSVG img")
    img.first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    assert img.count() == 1, f"{title}: {img.count()} SVG images"
    src = img.get_attribute("src") or ""
    assert src.startswith("data:image/svg+xml"), f"{title}: img src {src[:80]!r}"
    width, height = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert min(width, height) > 100, f"{title}: the SVG decoded to {width}x{height} px"
    _assert_drawn(img, title)


def _assert_drawn(locator: Any, title: str) -> None:
    box = locator.bounding_box()
    assert box, f"{title} has no box on the page"
    assert min(box["width"], box["height"]) > 100, f"{title} is drawn {box['width']}x{box['height']} px"


def _panel(page: Any) -> Any:
    return _cell(page, "panel = cf.explore(flow)").locator(".jp-OutputArea-output")


def _checkbox(panel: Any, name: str) -> Any:
    return panel.get_by_role("checkbox", name=name, exact=True)


def test_optimizer_panel_shows_checkboxes_and_inline_plan_svg(ran):
    import dataclasses

    import cloudflow_nb as cf

    panel = _panel(ran.page)
    switches = {f.name: f.default for f in dataclasses.fields(cf.Optimize) if isinstance(f.default, bool)}
    assert "fusion" in switches
    for name, default in switches.items():
        box = _checkbox(panel, name)
        box.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
        assert box.is_checked() == default, f"the {name} checkbox should start {'ticked' if default else 'clear'}"
    # every control's label is readable: none is cut short with an ellipsis
    cut = panel.locator(".widget-label").evaluate_all(
        "ls => ls.filter(l => l.offsetWidth > 0 && l.scrollWidth > l.clientWidth).map(l => l.textContent)"
    )
    assert not cut, f"labels cut short: {cut}"
    svg = panel.locator(".widget-html-content svg")
    svg.first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    assert svg.count() == 1
    assert svg.locator("g.node").count() >= 3, "the plan SVG has no stage nodes"
    _assert_drawn(svg, "the panel's plan SVG")


def test_unticking_fusion_changes_the_plan_text(ran):
    from playwright.sync_api import expect

    panel = _panel(ran.page)
    plan_text = panel.locator(".widget-html-content pre")
    before = plan_text.inner_text()
    fused, listed = _stage_count(before)
    assert fused == listed
    nodes_before = panel.locator(".widget-html-content svg g.node").count()

    fusion = _checkbox(panel, "fusion")
    fusion.click()  # the kernel re-optimizes; the panel's HTML widgets update in place
    plan_text.filter(has_not_text=before.splitlines()[0]).wait_for(timeout=UI_TIMEOUT_MS)
    after = plan_text.inner_text()
    unfused, listed_after = _stage_count(after)
    assert not fusion.is_checked()
    assert unfused > fused, f"{fused} -> {unfused} stages"
    assert listed_after == unfused
    assert "off (Optimize(fusion=False))" in after
    # the plan SVG is a second HTML widget: its update may land a moment after the text's
    nodes = panel.locator(".widget-html-content svg g.node")
    expect(nodes).not_to_have_count(nodes_before, timeout=UI_TIMEOUT_MS)
    assert nodes.count() > nodes_before, "the plan SVG did not follow"

    fusion.click()  # and back
    plan_text.filter(has_text=before.splitlines()[0]).wait_for(timeout=UI_TIMEOUT_MS)
    assert plan_text.inner_text() == before
    expect(nodes).to_have_count(nodes_before, timeout=UI_TIMEOUT_MS)


def test_dashboard_is_drawn_with_data(ran):
    """The live view of the serving notebook draws the bokeh dashboard under the graph."""
    output = _cell(ran.page, "view = cf.watch(dep").locator(".jp-OutputArea-output").last
    canvas = output.locator("canvas")  # bokeh draws inside (open) shadow roots; locators pierce them
    canvas.first.wait_for(state="attached", timeout=UI_TIMEOUT_MS)
    boxes = canvas.evaluate_all("cs => cs.map(c => c.getBoundingClientRect().toJSON())")
    figures = [b for b in boxes if b["width"] > 100 and b["height"] > 100]
    assert len(figures) >= 3, f"expected three drawn bokeh figures, canvas boxes {boxes}"
    area = output.bounding_box()
    assert area
    assert max(b["right"] for b in figures) <= area["x"] + area["width"] + 1, "the dashboard is cut off"
    # every line has data in the page (one source per stage plus the requests'); the samples are
    # streamed from a kernel thread, so how many arrived depends on timing: only ask for one
    points = ran.page.evaluate(
        """() => (window.Bokeh ? Bokeh.documents : []).flatMap(d => [...d.all_models])
            .filter(m => m.type === 'ColumnDataSource')
            .map(m => (typeof m.data.get === 'function' ? m.data.get('t') : m.data.t) || []).map(t => t.length)"""
    )
    assert len(points) >= 4, f"points per bokeh data source: {points}"
    assert min(points) >= 1, f"points per bokeh data source: {points}"


def test_no_console_errors(ran):
    unexpected = [m for m in ran.console if not any(h in m for h in HARMLESS_CONSOLE_ERRORS)]
    assert not unexpected, "console errors:\n" + "\n".join(unexpected)
    assert not ran.page_errors, "uncaught page errors:\n" + "\n".join(ran.page_errors)


def test_full_page_screenshot(ran, tmp_path_factory):
    page = ran.page
    # JupyterLab scrolls inside the notebook panel: scroll it to the top and grow the window until
    # all cells fit (the panel keeps some extra scroll room past the last cell, so measure the cells)
    fits = """() => {
        const outer = document.querySelector('.jp-NotebookPanel-notebook .jp-WindowedPanel-outer');
        outer.scrollTop = 0;
        const content = [...outer.children].reduce((h, e) => h + e.getBoundingClientRect().height, 0);
        return Math.ceil(content - outer.clientHeight);
    }"""
    size = page.viewport_size or {"width": 1400, "height": 1000}
    page.set_viewport_size(
        {"width": size["width"], "height": min(size["height"] + max(page.evaluate(fits), 0) + 20, 16_000)}
    )
    page.wait_for_function(f"() => ({fits})() <= 0", timeout=UI_TIMEOUT_MS)
    path = Path(os.environ.get("CLOUDFLOW_NB_SCREENSHOT") or tmp_path_factory.getbasetemp() / "serving-jupyterlab.png")
    page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}")
    assert path.stat().st_size > 10_000
