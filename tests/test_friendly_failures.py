"""What a newcomer's first mistakes look like: one clear ``FlowError`` (or a text fallback) each.

A script without a ``__main__`` guard, a closed cluster, an unreachable scheduler, and a graph
displayed without the ``dot`` program.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import graphviz
import pytest

import cloudflow_nb as cf
from cloudflow_nb import viz
from cloudflow_nb.runtime.mainguard import check_main_guard, guarded
from tests.runtime.dask_procs import free_port

# -- the __main__ guard -------------------------------------------------------------------------------

GUARDED = """\
import cloudflow_nb as cf

def main():
    with cf.LocalCluster(workers=1, gpu_workers=0, dashboard=False) as cluster:
        print("started", len(cluster.workers()))

if __name__ == "__main__":
    main()
"""
UNGUARDED = """\
import cloudflow_nb as cf

cluster = cf.LocalCluster(workers=1, gpu_workers=0, dashboard=False)
print("started")
"""


@pytest.mark.parametrize(
    ("source", "line", "inside"),
    [
        (GUARDED, 8, True),
        (GUARDED, 4, False),  # inside main(), whose body runs only when the guarded call runs
        (UNGUARDED, 3, False),
        ("if '__main__' == __name__:\n    go()\n", 2, True),
        ("if __name__ != '__main__':\n    go()\n", 2, False),
        ("if x:\n    if __name__ == '__main__':\n        go()\n", 3, False),  # only a top-level guard counts
        ("def broken(:\n", 1, True),  # unparsable: never block on a guess
    ],
)
def test_guarded_finds_the_top_level_main_block(source, line, inside):
    assert guarded(source, line) is inside


def test_forked_workers_need_no_guard():
    check_main_guard(sys._getframe(), "fork")  # nothing re-imports the script


def _exec_at_top_level(namespace: dict) -> None:
    """Run ``check_main_guard`` as module-level code in ``namespace`` (a script's top level)."""
    code = compile("check(sys._getframe(), 'spawn')", namespace.get("__file__", "<script>"), "exec")
    exec(code, {"check": check_main_guard, "sys": sys, **namespace})


def test_a_worker_process_reimporting_the_script_gets_the_error():
    with pytest.raises(cf.DeploymentError, match="started while a worker process imports your script"):
        _exec_at_top_level({"__name__": "__mp_main__"})


def test_code_run_outside_the_main_module_is_not_checked(tmp_path):
    script = tmp_path / "ran.py"
    script.write_text(UNGUARDED)  # as IPython's %run does: __name__ is "__main__" in its own namespace
    _exec_at_top_level({"__name__": "__main__", "__file__": str(script)})


def _run_script(tmp_path, source: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "serve_it.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path
    )


def test_a_script_without_main_guard_gets_one_clear_error(tmp_path):
    started = time.monotonic()
    result = _run_script(tmp_path, UNGUARDED)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "DeploymentError: LocalCluster: started at the top level of" in output
    assert 'if __name__ == "__main__":' in output
    assert "line 3" in output
    assert "Nanny failed to start" not in output
    assert "started" not in result.stdout
    assert len(output.splitlines()) < 15, output
    assert time.monotonic() - started < 60


@pytest.mark.cluster
def test_a_guarded_script_starts_its_cluster(tmp_path):
    result = _run_script(tmp_path, GUARDED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started 1"


# -- a closed cluster ---------------------------------------------------------------------------------


def inc(row):
    return row["x"] + 1


@pytest.mark.cluster
def test_a_closed_cluster_refuses_work_with_a_flow_error():
    flow = cf.Flow("closed", x=int).map(inc, names={"y": int})
    cluster = cf.LocalCluster(workers=1, gpu_workers=0, processes=False, dashboard=False)
    dep = cluster.deploy(flow)
    assert dep.predict({"x": 1})[0]["y"] == 2
    cluster.close()
    cluster.close()  # idempotent
    calls = {
        "deploy": lambda: cluster.deploy(flow),
        "predict": lambda: dep.predict({"x": 1}),
        "submit": lambda: dep.submit({"x": 1}),
        "workers": cluster.workers,
        "store": lambda: cluster.store.get("k"),
    }
    for what, call in calls.items():
        with pytest.raises(cf.DeploymentError, match="is closed") as info:
            call()
        assert cluster.scheduler_address in str(info.value), what
        assert "Event loop" not in str(info.value)


# -- an unreachable scheduler -------------------------------------------------------------------------


def test_connect_to_an_unreachable_scheduler_fails_fast_and_says_where():
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(cf.DeploymentError, match="no Dask scheduler answered") as info:
        cf.connect(address, timeout=1)
    assert time.monotonic() - started < 20  # Dask's own default waits 30 s
    message = str(info.value)
    assert repr(address) in message
    assert "dask scheduler" in message
    assert info.value.__cause__ is None


def test_connect_default_timeout_is_a_few_seconds():
    import inspect

    assert inspect.signature(cf.connect).parameters["timeout"].default <= 10


def test_connect_to_a_malformed_address_names_it():
    with pytest.raises(cf.DeploymentError, match="is not a scheduler address") as info:
        cf.connect("not::an::address", timeout=1)
    assert "'not::an::address'" in str(info.value)
    assert "tcp://host:8786" in str(info.value)


# -- show_graph() displayed without dot ---------------------------------------------------------------


def _flow() -> cf.Flow:
    return cf.Flow("shown", x=int).map(inc, names={"y": int}).map(inc, names={"z": int})


@pytest.fixture
def no_dot(monkeypatch, tmp_path):
    """A PATH without the ``dot`` program."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("dot") is None


@pytest.mark.parametrize("optimized", [True, False], ids=["physical", "logical"])
def test_show_graph_without_dot_displays_as_text(no_dot, optimized):
    from IPython.core.formatters import DisplayFormatter

    flow = _flow()
    graph = flow.show_graph(optimized=optimized)
    assert isinstance(graph, graphviz.Digraph)
    assert type(graph).__name__ == "Digraph"
    with pytest.raises(graphviz.ExecutableNotFound):  # rendering itself still needs dot
        graph.pipe(format="svg")
    bundle = graph._repr_mimebundle_()
    assert set(bundle) == {"text/plain"}
    assert flow.explain(optimized=optimized) in bundle["text/plain"]
    assert viz.DOT_MISSING_HINT in bundle["text/plain"]
    data, _ = DisplayFormatter().format(graph)  # what IPython does on display: no traceback
    assert flow.explain(optimized=optimized) in data["text/plain"]


def test_compare_graph_without_dot_displays_as_text(no_dot):
    comparison = cf.compare(_flow())
    assert comparison.text() in comparison.graph()._repr_mimebundle_()["text/plain"]


@pytest.mark.exe
@pytest.mark.skipif(shutil.which("dot") is None, reason="needs the Graphviz dot program")
def test_show_graph_with_dot_displays_as_svg_and_keeps_its_source():
    graph = _flow().show_graph()
    assert "<svg" in graph._repr_mimebundle_()["image/svg+xml"]
    assert set(graph._repr_mimebundle_(include=["image/png"])) == {"image/png"}
    assert graph.source.startswith("digraph")
