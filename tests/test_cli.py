"""``cloudflow-nb serve`` from a shell: the real command as a subprocess, every route over HTTP, SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import tomllib
from runtime.dask_procs import free_port, spawn_dask

import cloudflow_nb as cf
from cloudflow_nb.cli import main

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 180
STOP_TIMEOUT = 60

FLOW_MODULE = """
import cloudflow_nb as cf


def double(row):
    return 2 * row["x"]


flow = cf.Flow("doubler", x=int).map(double, names={"y": int})


def make_flow():
    return flow


not_a_flow = 42
"""


@pytest.fixture
def flow_dir(tmp_path, monkeypatch):
    """A directory holding ``flows_<n>.py`` (a unique module name per test), as the current directory."""
    name = f"flows_{os.getpid()}_{time.monotonic_ns()}"
    (tmp_path / f"{name}.py").write_text(FLOW_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_flow puts the current directory on it
    yield tmp_path, name
    sys.modules.pop(name, None)


# -- mistakes: one line, exit 2 (in process: no cluster is started) ----------------------------------


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("{m}", ["expected module:attribute", "got '{m}'"]),
        ("no_such_module_xyz:flow", ["cannot import module 'no_such_module_xyz'"]),
        ("{m}:nope", ["has no attribute 'nope'", "flows in it: flow"]),
        ("{m}:not_a_flow", ["{m}:not_a_flow is a int, not a cf.Flow"]),
    ],
)
def test_a_bad_target_says_why_in_one_line_and_exits_2(flow_dir, capsys, target, words):
    _, module = flow_dir
    assert main(["serve", target.format(m=module)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("cloudflow-nb serve: error: ")
    for word in words:
        assert word.format(m=module) in err


def test_the_command_is_declared_as_an_entry_point():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"cloudflow-nb": "cloudflow_nb.cli:main"}


# -- the real command ---------------------------------------------------------------------------------


class Server:
    """``python -m cloudflow_nb serve ...`` in ``cwd``; its output lines are read by a thread."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), **(env or {})}
        command = [sys.executable, "-m", "cloudflow_nb", "serve", *args, "--port", "0"]
        self.proc = subprocess.Popen(
            command, cwd=cwd, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put(line.decode(errors="replace").rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line (from here on) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.seen[-40:]))

    def stop(self, how: str = "SIGTERM") -> int:
        """SIGTERM to the process, or Ctrl-C (SIGINT to its whole process group); its exit status."""
        if how == "SIGTERM":
            self.proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(STOP_TIMEOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait(30)


def fetch(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def serve_and_check(server: Server, headers: dict[str, str]) -> tuple[str, list[int]]:
    """Read the announced URLs, hit every route; the base URL and the pids of the server's children."""
    urls = {}
    for name in ("docs", "openapi", "metrics"):
        urls[name] = server.wait_for(rf"^{name}\s+(http://\S+)$", START_TIMEOUT).group(1)
    server.wait_for("stop with Ctrl-C or SIGTERM", 30)
    base = urls["docs"].removesuffix("/docs")
    assert urls == {"docs": base + "/docs", "openapi": base + "/openapi.json", "metrics": base + "/metrics"}
    assert base.startswith("http://127.0.0.1:")
    children = [p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)]
    status, body = fetch(base + "/predict", json.dumps([{"x": 1}, {"x": 21}]).encode(), headers)
    assert (status, [row["y"] for row in json.loads(body)["rows"]]) == (200, [2, 42])
    doc = json.loads(fetch(urls["openapi"])[1])
    assert doc["components"]["schemas"]["Row"]["required"] == ["x"]
    assert b"/predict" in fetch(urls["docs"])[1]
    status, text = fetch(urls["metrics"], headers=headers)
    assert status == 200
    assert b'cloudflow_requests_total{flow="doubler"} 1.0' in text
    assert fetch(base + "/healthz")[0] == 200
    assert fetch(base + "/readyz")[0] == 200
    assert fetch(base + "/stats", headers=headers)[0] == 200
    return base, children


def gone(pids: list[int], timeout: float) -> list[int]:
    """The pids still running after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return alive


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_serve_on_an_embedded_cluster_then_stop(flow_dir, how):
    cwd, module = flow_dir
    server = Server(cwd, f"{module}:make_flow", "--workers", "1", env={"CLOUDFLOW_NB_TOKEN": "t0ken"})
    try:
        server.wait_for(r"serving flow 'doubler' \(1 stage\) on an embedded cluster of 1 CPU and 0 GPU", START_TIMEOUT)
        base, children = serve_and_check(server, {"Authorization": "Bearer t0ken"})
        assert children, "the embedded cluster's worker processes"
        assert fetch(base + "/predict", b'{"x": 1}')[0] == 401
        assert server.stop(how) == 0
        server.wait_for("stopped", 10)
        assert gone(children, 30) == []
        assert not [line for line in server.seen if "Traceback" in line or "KeyboardInterrupt" in line]
    finally:
        server.kill()


@pytest.mark.cluster
@pytest.mark.slow
def test_with_no_worker_the_command_waits_then_says_why_in_one_line(flow_dir):
    cwd, module = flow_dir
    address = f"tcp://127.0.0.1:{free_port()}"
    scheduler = spawn_dask("scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard")
    server = None
    try:
        server = Server(cwd, f"{module}:flow", "--scheduler", address, "--wait-workers", "1")
        server.wait_for(rf"waiting up to 1 s for a worker to join {address}", START_TIMEOUT)
        assert server.proc.wait(timeout=START_TIMEOUT) == 1
        server.wait_for(rf"error: no worker joined the Dask cluster at {address} within 1 s; start one with", 10)
    finally:
        if server is not None:
            server.kill()
        scheduler.kill()
        scheduler.wait(timeout=30)


@pytest.mark.cluster
@pytest.mark.slow
def test_serve_on_a_running_dask_cluster_then_sigterm(flow_dir, tmp_path_factory, monkeypatch):
    cwd, module = flow_dir
    address = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # the worker cannot import the flow's module
    procs = [spawn_dask("scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard")]
    server = None
    try:
        common = ("--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1")
        server = Server(cwd, f"{module}:flow", "--scheduler", address, "--no-optimize")
        procs.append(spawn_dask("worker", address, *common))  # it may join after the command started
        server.wait_for(rf"serving flow 'doubler' \(1 stage\) on the Dask cluster at {address}", START_TIMEOUT)
        serve_and_check(server, {})
        assert server.stop() == 0
        with cf.connect(address) as cluster:
            assert cluster.deployments() == []
    finally:
        if server is not None:
            server.kill()
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)
