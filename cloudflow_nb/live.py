"""Live dashboards: ``cf.dashboard(deployment)`` draws latency and throughput with bokeh.

The dashboard samples ``Deployment.stats()`` (on demand with :meth:`Dashboard.refresh`, or every
``interval`` seconds after :meth:`Dashboard.start`) and streams the figures into bokeh data
sources; in a notebook the figures live in a ``jupyter_bokeh`` widget, so they update in place.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["Dashboard", "dashboard"]

_bokehjs_loaded = False

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
HISTORY = 600  # samples kept per line


def dashboard(deployment: Any, interval: float = 1.0, start: bool = True) -> Dashboard:
    """A live dashboard of ``deployment``; it refreshes every ``interval`` seconds once started."""
    dash = Dashboard(deployment, interval)
    if start:
        dash.start()
    return dash


class Dashboard:
    """Per-stage p50 latency, end-to-end p50/p99 latency and throughput over time.

    Attributes
    ----------
    sources : dict
        ``"requests"`` and one entry per stage name: the bokeh ``ColumnDataSource`` behind each line.
    """

    def __init__(self, deployment: Any, interval: float = 1.0) -> None:
        from bokeh.layouts import row
        from bokeh.models import ColumnDataSource
        from bokeh.plotting import figure

        self.deployment = deployment
        self.interval = interval
        self._start = time.monotonic()
        self._last: tuple[float, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # streaming (refresh thread) vs serializing the figures (_resync)
        stats = deployment.stats()
        self.sources: dict[str, Any] = {"requests": ColumnDataSource({"t": [], "p50": [], "p99": [], "rate": []})}
        # the row fits the notebook's output area: the stage figure takes the width the other two leave
        stages = figure(
            title="stage latency p50 (ms)", height=260, width=360, x_axis_label="seconds", sizing_mode="stretch_width"
        )
        for i, name in enumerate(stats["stages"]):
            self.sources[name] = ColumnDataSource({"t": [], "p50": []})
            stages.line("t", "p50", source=self.sources[name], legend_label=name, color=PALETTE[i % len(PALETTE)])
        latency = figure(title="request latency (ms)", height=260, width=280, x_axis_label="seconds")
        latency.line("t", "p50", source=self.sources["requests"], legend_label="p50", color=PALETTE[0])
        latency.line("t", "p99", source=self.sources["requests"], legend_label="p99", color=PALETTE[3])
        for fig in (stages, latency):  # legends sit in the top-left corner and let the lines show through
            fig.legend.location = "top_left"
            fig.legend.label_text_font_size = "8pt"
            fig.legend.background_fill_alpha = 0.5
        rate = figure(title="throughput (requests/s)", height=260, width=280, x_axis_label="seconds")
        rate.line("t", "rate", source=self.sources["requests"], color=PALETTE[2])
        self.layout = row(stages, latency, rate, sizing_mode="stretch_width")
        self._widget: Any = None

    def refresh(self) -> dict[str, Any]:
        """Sample the deployment's stats once and append them to the figures."""
        stats = self.deployment.stats()
        now = time.monotonic()
        t = round(now - self._start, 3)
        count = stats["requests"]["count"]
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = (count - self._last[1]) / (now - self._last[0])
        self._last = (now, count)
        req = stats["requests"]
        with self._lock:
            self._stream(stats, t, req, rate)
        return stats

    def _stream(self, stats: dict[str, Any], t: float, req: dict[str, Any], rate: float) -> None:
        self.sources["requests"].stream(
            {"t": [t], "p50": [req["p50_ms"] or 0.0], "p99": [req["p99_ms"] or 0.0], "rate": [rate]}, HISTORY
        )
        for name, stage in stats["stages"].items():
            if name in self.sources:
                self.sources[name].stream({"t": [t], "p50": [stage["p50_ms"] or 0.0]}, HISTORY)

    def start(self) -> Dashboard:
        """Refresh every ``interval`` seconds in a background thread until :meth:`stop`."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="cloudflow-dashboard", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop refreshing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if getattr(self.deployment, "closed", False):
                return
            try:
                self.refresh()
            except Exception:  # a closing deployment: stop quietly, the figures keep their data
                return

    @property
    def widget(self) -> Any:
        """The figures as an ipywidget (``jupyter_bokeh.BokehModel``) that updates in place."""
        if self._widget is None:
            from jupyter_bokeh import BokehModel

            _load_bokehjs()
            self._widget = BokehModel(self.layout)
            # jupyter_bokeh applies streamed samples only to a view that has already rendered, so
            # samples sent while the page was still drawing it (or before a later view) never show:
            # count the views and send a new view the whole figure
            self._widget._view_count = 0
            self._widget.observe(self._resync, names="_view_count")
        return self._widget

    def _resync(self, change: dict[str, Any]) -> None:
        if (change["new"] or 0) > (change["old"] or 0):
            with self._lock:
                self._widget.update_from_model(self.layout)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from cloudflow_nb.widgets import widget_bundle

        return widget_bundle(lambda: self.widget, repr(self))

    def __repr__(self) -> str:
        return f"<cf.Dashboard of {self.deployment!r}>"


def _load_bokehjs() -> None:
    """BokehJS must be on the page before a ``BokehModel`` renders: load it once per kernel."""
    global _bokehjs_loaded
    if _bokehjs_loaded:
        return
    try:
        from IPython import get_ipython
    except ImportError:
        return
    if get_ipython() is not None and hasattr(get_ipython(), "kernel"):
        from bokeh.io import output_notebook

        output_notebook(hide_banner=True)
        _bokehjs_loaded = True
