"""``cf.watch``: the live view of a deployment (its graph with each stage's figures) or a cluster.

``cf.watch(dep)`` shows the deployed plan's graph with every stage's requests, p50/p99, errors,
batch sizes, replicas and the workers they run on (GPU tags included) drawn on its node, above
the bokeh dashboard (``cf.dashboard``); without ``dot`` the graph is a text table of the same
figures. ``cf.watch(cluster)`` lists the workers with their tags, memory and the replicas they
host. A daemon thread refreshes the view every ``interval`` seconds (never more often than every
``MIN_INTERVAL``) and stops when the deployment or cluster closes or the view is closed; the
graph is drawn again only when its figures changed.
"""

from __future__ import annotations

import html
import math
import threading
from typing import Any

from cloudflow_nb.errors import FlowError
from cloudflow_nb.figures import (
    figures_table,
    gpu_workers,
    headline,
    stage_notes,
    workers_html,
)
from cloudflow_nb.viz import DOT_MISSING_HINT, dot_available

__all__ = ["MIN_INTERVAL", "ClusterView", "DeploymentView", "watch"]

MIN_INTERVAL = 0.5  # seconds: the fastest a view refreshes, however small the interval asked


def watch(target: Any, interval: float = 1.0, dashboard: bool = True, start: bool = True) -> Any:
    """A live notebook view of a deployment or a cluster, refreshed every ``interval`` seconds.

    Parameters
    ----------
    target : cf.Deployment or cf.Cluster
        What to watch: a deployment (its graph with live figures) or a cluster (its workers).
    interval : float
        Seconds between refreshes; values under ``MIN_INTERVAL`` (0.5 s) are raised to it.
    dashboard : bool
        Show the bokeh latency and throughput dashboard under a deployment's graph.
    start : bool
        Start refreshing now (else call ``.start()``, or ``.refresh()`` by hand).

    Examples
    --------
    >>> view = cf.watch(dep)            # doctest: +SKIP
    >>> view.figures["s0"]               # doctest: +SKIP
    ['12 calls, 0 errors, 0 rejected', 'p50 1.2 ms, p99 3.4 ms', ...]
    >>> view.close()                     # doctest: +SKIP
    """
    from cloudflow_nb.runtime.cluster import Cluster
    from cloudflow_nb.runtime.deployment import Deployment

    if isinstance(target, Deployment):
        view: _View = DeploymentView(target, interval, dashboard)
    elif isinstance(target, Cluster):
        view = ClusterView(target, interval)
    else:
        raise FlowError(f"watch: expected a cf.Deployment or a cf.Cluster, got {type(target).__name__}")
    return view.start() if start else view


def _interval(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise FlowError(f"watch: interval must be a positive number of seconds, got {value!r}")
    return max(seconds, MIN_INTERVAL)


class _View:
    """A widget refreshed by one daemon thread until its target closes or :meth:`close` runs."""

    def __init__(self, target: Any, interval: float) -> None:
        self.target = target
        self.interval = _interval(interval)
        self.refreshes = 0  # samples taken
        self.error = ""  # the last failed refresh (the view shows it and tries again)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one refresh at a time: the thread's or a caller's
        self._thread: threading.Thread | None = None
        self.widget: Any = None  # the ipywidgets box, made by the subclass
        self.status: Any = None  # its status line (an ipywidgets.HTML)

    def start(self) -> Any:
        """Refresh every ``interval`` seconds in a daemon thread (idempotent); returns the view."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="cloudflow-watch", daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """Whether the refresh thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop refreshing (the view keeps its last figures)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def close(self) -> None:
        """Stop refreshing and close the widgets."""
        self.stop()
        if self.widget is not None:
            for child in self.widget.children:
                if self.dashboard_widget is None or child is not self.dashboard_widget:
                    child.close()  # the bokeh widget closes itself when collected (twice raises)
            self.widget.close()

    @property
    def dashboard_widget(self) -> Any:
        """The bokeh dashboard's widget in the view, if any."""
        return None

    def _ended(self) -> str | None:
        """Why refreshing should stop: the target closed, or the widget did (its comm is gone)."""
        if self.target.closed:
            return "closed"
        if self.widget is not None and getattr(self.widget, "comm", None) is None:
            return "view closed"
        return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if why := self._ended():
                self._status(f"stopped: {why}")
                return
            try:
                self.refresh()
            except Exception as exc:  # stop if the target went away meanwhile, else show it and retry
                if why := self._ended():
                    self._status(f"stopped: {why}")
                    return
                self.error = f"{type(exc).__name__}: {exc}"
                self._status(f"refresh failed ({self.error}); retrying")

    def refresh(self) -> None:
        """Sample the target once and update the view."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        raise NotImplementedError

    def _status(self, text: str) -> None:
        self.status.value = f"<small>{html.escape(text)}</small>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from cloudflow_nb.widgets import widget_bundle

        return widget_bundle(lambda: self.widget, repr(self))


class DeploymentView(_View):
    """The live view behind ``cf.watch(dep)``; ``.widget`` is the ipywidgets box to display.

    Attributes
    ----------
    figures : dict
        Stage name -> the lines drawn on its node now (see ``cloudflow_nb.figures.stage_lines``).
    stats : dict
        The last ``dep.stats()`` sampled.
    graph : ipywidgets.HTML
        The plan's SVG with the figures, or the text table without ``dot``.
    renders : int
        How many times the graph was drawn (only when its figures changed).
    """

    def __init__(self, deployment: Any, interval: float = 1.0, dashboard: bool = True) -> None:
        import ipywidgets as w

        super().__init__(deployment, interval)
        self.deployment = deployment
        self.figures: dict[str, list[str]] = {}
        self.stats: dict[str, Any] = {}
        self.renders = 0
        self._gpu: set[str] = set()
        self._known: set[str] = set()
        self.header = w.HTML()
        self.graph = w.HTML(layout=w.Layout(overflow="auto"))
        self.status = w.HTML()
        self.dashboard = None
        parts = [self.header, self.graph, self.status]
        if dashboard:
            from cloudflow_nb.live import Dashboard

            self.dashboard = Dashboard(deployment, self.interval)
            parts.append(self.dashboard.widget)
        self.widget = w.VBox(parts)
        self.refresh()

    def _refresh(self) -> None:
        stats = self.dashboard.refresh() if self.dashboard is not None else self.deployment.stats()
        self.refreshes += 1
        self.stats = stats
        workers = {r["worker"] for st in stats["stages"].values() for r in st["replicas"]}
        if not workers <= self._known:  # a replica on a worker not seen yet: read the tags again
            infos = self.deployment.workers()
            self._known = {i.address for i in infos}
            self._gpu = gpu_workers(infos)
        self.header.value = f"<b>cf.Deployment {html.escape(self.deployment.name)}</b>: {html.escape(headline(stats))}"
        figures = stage_notes(stats, self._gpu)
        if figures != self.figures or not self.graph.value:
            self.graph.value = self._draw(stats)
            self.renders += 1
            self.figures = figures  # after the graph: a reader seeing these figures sees them drawn
        self._status(f"refreshing every {self.interval:g} s (sample {self.refreshes})")

    def _draw(self, stats: dict[str, Any]) -> str:
        table = f"<pre style='font-size:11px'>{html.escape(figures_table(stats, self._gpu))}</pre>"
        if not dot_available():
            return f"{table}<p><i>{html.escape(DOT_MISSING_HINT)}</i></p>"
        from cloudflow_nb.figures import deployment_svg

        try:
            return deployment_svg(self.deployment.plan, stats, self._gpu)
        except Exception as exc:  # a broken dot install: the table is the view
            return f"{table}<p><i>graph not drawn: {html.escape(str(exc))}</i></p>"

    def stop(self) -> None:
        super().stop()
        if self.dashboard is not None:
            self.dashboard.stop()

    @property
    def dashboard_widget(self) -> Any:
        return None if self.dashboard is None else self.dashboard.widget

    def __repr__(self) -> str:
        return f"<cf.watch {self.deployment!r}>"


class ClusterView(_View):
    """The live view behind ``cf.watch(cluster)``: workers with tags, memory and replicas.

    Attributes
    ----------
    rows : list of dict
        The last ``cluster.worker_report()``.
    """

    def __init__(self, cluster: Any, interval: float = 1.0) -> None:
        import ipywidgets as w

        super().__init__(cluster, interval)
        self.cluster = cluster
        self.rows: list[dict[str, Any]] = []
        self.table = w.HTML()
        self.status = w.HTML()
        self.widget = w.VBox([self.table, self.status])
        self.refresh()

    def _refresh(self) -> None:
        rows = self.cluster.worker_report()
        self.refreshes += 1
        if rows != self.rows or not self.table.value:
            self.rows = rows
            gpu = sum(1 for r in rows if r["gpu"])
            title = (
                f"<b>cf.{type(self.cluster).__name__}</b> at <code>{html.escape(self.cluster.scheduler_address)}</code>"
            )
            self.table.value = f"{title}: {len(rows)} workers ({gpu} GPU-tagged){workers_html(rows)}"
        self._status(f"refreshing every {self.interval:g} s (sample {self.refreshes})")

    def __repr__(self) -> str:
        return f"<cf.watch {self.cluster!r}>"
