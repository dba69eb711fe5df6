"""The live deployment view (``cf.watch``) and the deployment's and cluster's notebook reprs.

Figures are checked headlessly through widget values after real traffic on the session's
LocalCluster; the pure formatting is checked on hand-made stats.
"""

from __future__ import annotations

import shutil
import time

import pytest

import cloudflow_nb as cf
from cloudflow_nb import figures, liveview, viz
from cloudflow_nb.runtime.cluster import worker_rows

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="needs the Graphviz dot program")

STAGE = {
    "count": 12,
    "errors": 1,
    "rejected": 2,
    "p50_ms": 1.25,
    "p99_ms": 150.4,
    "batching": 8,
    "mean_batch": 3.5,
    "max_batch": 8,
    "queued": 4,
    "inflight": 3,
    "in_router": False,
    "replicas": [
        {"worker": "tcp://127.0.0.1:1001", "device": "cuda:0", "calls": 5},
        {"worker": "tcp://127.0.0.1:1001", "device": "cuda:0", "calls": 4},
        {"worker": "tcp://127.0.0.1:1002", "device": "cpu", "calls": 3},
    ],
}
STATS = {
    "flow": "toy",
    "requests": {"count": 12, "errors": 1, "rejected": 2, "p50_ms": 2.0, "p99_ms": 160.0},
    "stages": {"model": STAGE, "pick": {"count": 0, "in_router": True, "p50_ms": None, "p99_ms": None}},
}

# -- pure formatting ----------------------------------------------------------------------------------


def test_stage_lines_carry_every_figure_and_tag_gpu_workers():
    lines = figures.stage_lines(STAGE, gpu={"tcp://127.0.0.1:1001"})
    assert lines == [
        "12 calls, 1 errors, 2 rejected",
        "p50 1.25 ms, p99 150 ms",
        "batch size mean 3.5, max 8",
        "4 queued, 3 in flight",
        "3 replicas:",
        "  2x 127.0.0.1:1001 [GPU, cuda:0] (9 calls)",
        "  127.0.0.1:1002 (3 calls)",
    ]


def test_router_stages_and_empty_figures_read_plainly():
    assert figures.stage_notes(STATS)["pick"] == ["0 calls, 0 errors, 0 rejected", "p50 -, p99 -", "runs in the router"]


def test_text_table_has_the_same_figures():
    text = figures.figures_table(STATS, gpu={"tcp://127.0.0.1:1001"})
    head, columns, model, pick = text.splitlines()
    assert head == "flow 'toy': 12 requests, 1 errors, 2 rejected, p50 2 ms, p99 160 ms"
    assert columns.split() == [
        "stage",
        "calls",
        "errors",
        "rejected",
        "p50",
        "p99",
        "batch",
        "queued",
        "replicas",
        "(workers)",
    ]
    assert model.split()[:7] == ["model", "12", "1", "2", "1.25", "ms", "150"]
    assert "3.5/8" in model
    assert "2x 127.0.0.1:1001 [GPU, cuda:0] (9 calls); 127.0.0.1:1002 (3 calls)" in model
    assert pick.split()[-1] == "router"


def test_worker_rows_join_the_scheduler_view_and_the_replicas():
    workers = {
        "tcp://h:2": {"name": "cpu-0", "nthreads": 1, "memory_limit": 2**30, "metrics": {"memory": 3 * 2**20}},
        "tcp://h:1": {"name": "gpu-0", "resources": {"GPU": 1}, "nthreads": 2, "memory_limit": 0, "metrics": {}},
        "tcp://h:3": {"name": "going", "status": "closing_gracefully"},
    }
    placed = {"b": [["r1", "s0", "tcp://h:1", "cpu"]], "a": [["", "s1", "tcp://h:1"], ["", "s0", "tcp://h:2"]]}
    rows = worker_rows(workers, placed)
    assert [r["address"] for r in rows] == ["tcp://h:1", "tcp://h:2"]
    assert rows[0] == {
        "address": "tcp://h:1",
        "name": "gpu-0",
        "gpu": True,
        "threads": 2,
        "memory": None,
        "memory_limit": None,
        "replicas": ["a/s1", "b/s0"],
    }
    text = figures.workers_table(rows)
    assert "h:2     cpu-0  -     3.0 MiB / 1.0 GiB" in text
    assert "<td style='text-align:left'>GPU</td>" in figures.workers_html(rows)


def test_cluster_repr_never_raises():
    class Gone:
        scheduler_address = "tcp://127.0.0.1:1"
        dashboard_link = None

        def worker_report(self):
            raise cf.DeploymentError("cluster 'tcp://127.0.0.1:1' is closed")

    bundle = figures.cluster_bundle(Gone())
    assert "is closed" in bundle["text/plain"]
    assert "is closed" in bundle["text/html"]


@pytest.mark.parametrize(("asked", "used"), [(0.01, liveview.MIN_INTERVAL), (2, 2.0), ("1.5", 1.5)])
def test_interval_is_bounded_below(asked, used):
    assert liveview._interval(asked) == used


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "soon", None])
def test_bad_intervals_are_refused(bad):
    with pytest.raises(cf.FlowError, match=r"watch: interval must be a positive number of seconds, got"):
        liveview._interval(bad)


def test_watch_refuses_other_things():
    with pytest.raises(cf.FlowError, match=r"expected a cf\.Deployment or a cf\.Cluster, got Flow"):
        cf.watch(cf.Flow("f", x=int))


# -- on a real deployment -----------------------------------------------------------------------------


def inc(row):
    return row["x"] + 1


def double_all(rows):
    return [row["y"] * 2 for row in rows]


@pytest.fixture
def deployment(serving_cluster):
    flow = cf.Flow("watched", x=int).map(inc, names={"y": int})
    flow = flow.map(double_all, names={"z": int}, batching=True, gpu=True)
    with serving_cluster.deploy(flow, optimize=cf.Optimize(fusion=False)) as dep:
        yield dep


def _wait(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.mark.cluster
def test_watch_shows_each_stages_figures_after_traffic(deployment, serving_cluster):
    view = cf.watch(deployment, interval=0.5, dashboard=False)
    try:
        assert set(view.figures) == {"inc", "double_all"}
        assert view.figures["inc"][0].startswith("0 calls")
        for x in range(6):
            deployment.predict({"x": x})
        assert _wait(lambda: view.figures["inc"][0].startswith("6 calls")), view.figures
        gpu = {w.address for w in serving_cluster.workers() if w.gpu}
        (worker,) = {r["worker"] for r in view.stats["stages"]["double_all"]["replicas"]}
        assert worker in gpu
        assert any("[GPU" in line for line in view.figures["double_all"])
        assert any(line.startswith("batch size mean") for line in view.figures["double_all"])
        assert "6 requests" in view.header.value
        if viz.dot_available():
            assert "<svg" in view.graph.value
            assert "6 calls, 0 errors, 0 rejected" in view.graph.value
        assert "refreshing every 0.5 s" in view.status.value
    finally:
        view.close()
    assert not view.running


@pytest.mark.cluster
def test_graph_is_redrawn_only_when_figures_change(deployment):
    view = cf.watch(deployment, start=False, dashboard=False)
    renders = view.renders
    view.refresh()
    view.refresh()
    assert view.renders == renders  # nothing changed
    deployment.predict({"x": 1})
    view.refresh()
    assert view.renders == renders + 1


@pytest.mark.cluster
def test_refresh_rate_is_bounded_and_the_thread_stops_with_the_deployment(deployment):
    view = cf.watch(deployment, interval=0.01, dashboard=False)
    assert view.interval == liveview.MIN_INTERVAL
    started, first = time.monotonic(), view.refreshes
    time.sleep(1.6)
    taken = view.refreshes - first
    assert 1 <= taken <= (time.monotonic() - started) / liveview.MIN_INTERVAL + 1
    assert view.running
    deployment.close()
    assert _wait(lambda: not view.running, 10)
    assert "stopped: closed" in view.status.value


@pytest.mark.cluster
def test_closing_the_widget_stops_the_thread(deployment):
    view = cf.watch(deployment, interval=0.5, dashboard=False)
    assert view.running
    view.widget.close()
    assert _wait(lambda: not view.running, 10)


@pytest.mark.cluster
def test_without_dot_the_view_is_a_text_table(deployment, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not viz.dot_available()
    deployment.predict({"x": 1})
    view = cf.watch(deployment, start=False, dashboard=False)
    assert "<svg" not in view.graph.value
    assert "<pre" in view.graph.value
    assert "replicas (workers)" in view.graph.value
    assert "1 requests" in view.graph.value
    assert "apt-get install graphviz" in view.graph.value


@pytest.mark.cluster
def test_dashboard_sits_under_the_graph_and_shares_the_samples(deployment):
    view = cf.watch(deployment, start=False)
    assert view.dashboard is not None
    assert view.widget.children[-1] is view.dashboard.widget
    deployment.predict({"x": 1})
    view.refresh()
    assert len(view.dashboard.sources["requests"].data["t"]) == 2  # one sample per refresh
    view.close()


@pytest.mark.cluster
def test_deployment_repr_is_a_snapshot_pointing_to_watch(deployment):
    assert repr(deployment).count("\n") == 0
    deployment.predict({"x": 1})
    bundle = deployment._repr_mimebundle_()
    assert "cf.watch(dep)" in bundle["text/plain"]
    assert "1 requests" in bundle["text/plain"]
    if viz.dot_available():
        assert "<svg" in bundle["text/html"]
        assert "cf.watch(dep)" in bundle["text/html"]
        assert "1 calls, 0 errors" in bundle["text/html"]
    deployment.close()
    assert deployment._repr_mimebundle_() == {"text/plain": repr(deployment)}


@pytest.mark.cluster
def test_deployment_repr_without_dot_is_the_text_table(deployment, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    bundle = deployment._repr_mimebundle_()
    assert set(bundle) == {"text/plain"}
    assert "replicas (workers)" in bundle["text/plain"]
    assert viz.DOT_MISSING_HINT in bundle["text/plain"]


@pytest.mark.cluster
def test_cluster_view_lists_workers_tags_memory_and_replicas(deployment, serving_cluster):
    view = cf.watch(serving_cluster, start=False)
    rows = {r["address"]: r for r in view.rows}
    assert len(rows) == len(serving_cluster.workers())
    for stage, st in deployment.stats()["stages"].items():
        for replica in st["replicas"]:
            assert f"{deployment.name}/{stage}" in rows[replica["worker"]]["replicas"]
    assert sum(r["gpu"] for r in rows.values()) == 1
    assert all(r["memory_limit"] for r in rows.values())
    assert "GPU" in view.table.value
    assert deployment.name in view.table.value
    bundle = serving_cluster._repr_mimebundle_()
    assert f"{deployment.name}/double_all" in bundle["text/plain"]
    assert "GPU-tagged" in bundle["text/html"]
