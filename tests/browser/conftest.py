"""A private JupyterLab server and a headless Debian Chromium driven by Playwright.

Nothing here touches the user's Jupyter set-up or the repository: the server's config, data,
runtime, settings, workspaces and IPython dirs all live in a temp dir, and the notebooks it
serves are copies. BokehJS is inlined (``BOKEH_RESOURCES=inline``) because there is no CDN
offline. The browser is the system's ``/usr/bin/chromium``; Playwright's own browser download
(``playwright install``) is never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# JupyterLab settings for a test run: render every cell (JupyterLab 4 otherwise virtualises
# off-screen cells, so they are not in the DOM) and never reach for the network.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
SERVER_START_TIMEOUT = 60.0


class StartupError(RuntimeError):
    """JupyterLab or Chromium did not come up; the whole browser session may be retried."""


def missing_requirements() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    import importlib.util

    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (make setup installs Debian's chromium when run as root)"
    for module in ("playwright", "jupyterlab"):
        if importlib.util.find_spec(module) is None:
            return f"the {module} package is missing (pip install -e '.[browser]')"
    if shutil.which("dot") is None:
        return "Graphviz 'dot' is missing (make setup installs it): the notebook's graphs would be text"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LabServer:
    """A running ``python -m jupyterlab`` (the PID is the server itself, not a launcher)."""

    proc: subprocess.Popen[bytes]
    url: str
    token: str
    root: Path
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def api(self, path: str) -> Any:
        req = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.load(resp)

    def stop(self) -> None:
        """SIGTERM: the server shuts its kernels down (and their process groups) before exiting."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_lab(root: Path, home: Path) -> LabServer:
    """Start JupyterLab serving ``root`` with all its state under ``home``; wait until it answers."""
    dirs = {
        "JUPYTER_CONFIG_DIR": home / "config",
        "JUPYTER_DATA_DIR": home / "data",
        "JUPYTER_RUNTIME_DIR": home / "runtime",
        "IPYTHONDIR": home / "ipython",
        "JUPYTERLAB_SETTINGS_DIR": home / "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": home / "lab-workspaces",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    for plugin, settings in LAB_SETTINGS.items():
        target = dirs["JUPYTERLAB_SETTINGS_DIR"] / f"{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(settings))
    env = {**os.environ, **{k: str(v) for k, v in dirs.items()}}
    env["BOKEH_RESOURCES"] = "inline"
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_CONFIG_PATH", None)
    port, token = _free_port(), secrets.token_hex(16)
    log = home / "jupyterlab.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--allow-root",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.terminals_enabled=False",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = LabServer(proc, f"http://127.0.0.1:{port}", token, root, log)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise StartupError(f"JupyterLab exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            server.api("/api/status")
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise StartupError(
                f"JupyterLab did not answer /api/status in {SERVER_START_TIMEOUT:.0f} s:\n{server.log_tail()}"
            )
        time.sleep(0.2)  # poll interval of the readiness check


@dataclass
class BrowserSession:
    """A JupyterLab server plus a Chromium page, and everything the page logged."""

    server: LabServer
    page: Any
    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):  # best effort: the server below must still be stopped
                closer()
        self.server.stop()


def open_session(root: Path, home: Path, viewport: dict[str, int]) -> BrowserSession:
    """Start JupyterLab and Chromium; raise :class:`StartupError` if either does not come up."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    server = start_lab(root, home)
    session = BrowserSession(server, page=None)
    try:
        pw = sync_playwright().start()
        session.closers.append(pw.stop)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS, timeout=60_000)
        session.closers.append(browser.close)
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        page.on("console", lambda msg: msg.type == "error" and session.console.append(f"{msg.text} @ {msg.location}"))
        page.on("pageerror", lambda exc: session.page_errors.append(str(exc)))
        session.page = page
    except PlaywrightError as exc:
        session.close()
        raise StartupError(f"Chromium did not start: {exc}") from exc
    except BaseException:
        session.close()
        raise
    return session


def open_notebook(session: BrowserSession, name: str, timeout_ms: float = 60_000) -> None:
    """Open ``name`` in JupyterLab and wait until every cell is in the DOM and its kernel is idle."""
    from playwright.sync_api import Error as PlaywrightError

    page = session.page
    try:
        page.goto(f"{session.server.url}/lab/tree/{name}?token={session.server.token}", timeout=timeout_ms)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout_ms)
        page.wait_for_selector(
            '.jp-Notebook-ExecutionIndicator[data-status="idle"]', state="attached", timeout=timeout_ms
        )
    except PlaywrightError as exc:
        raise StartupError(f"JupyterLab did not open {name}: {exc}\n{session.server.log_tail()}") from exc
    deadline = time.monotonic() + timeout_ms / 1000
    while not _kernel_ready(session.server, name):  # the kernel is up and this page is connected to it
        if time.monotonic() > deadline:
            raise StartupError(f"the kernel of {name} did not start:\n{session.server.log_tail()}")
        page.wait_for_timeout(200)  # poll interval of the readiness check


def _kernel_ready(server: LabServer, name: str) -> bool:
    try:
        sessions = server.api("/api/sessions")
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return False
    return any(
        s["path"] == name and s["kernel"]["execution_state"] == "idle" and s["kernel"].get("connections", 1) >= 1
        for s in sessions
    )


@pytest.fixture(scope="module")
def notebook_page(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserSession]:
    """The test module's ``NOTEBOOK`` (a copy in a temp dir) open in JupyterLab, kernel idle.

    JupyterLab and Chromium are fresh per module; if either fails to start, or the notebook
    does not open, the whole session is retried once.
    """
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    source = Path(request.module.NOTEBOOK)
    root = tmp_path_factory.mktemp("notebooks")
    shutil.copy(source, root / source.name)
    last: StartupError | None = None
    for attempt in (1, 2):
        home = tmp_path_factory.mktemp(f"jupyter-home-{attempt}")
        try:
            session = open_session(root, home, viewport={"width": 1400, "height": 1000})
        except StartupError as exc:
            last = exc
            continue
        try:
            open_notebook(session, source.name)
        except StartupError as exc:
            session.close()
            last = exc
            continue
        try:
            yield session
        finally:
            session.close()
        return
    raise AssertionError(f"JupyterLab/Chromium failed to start twice; last error:\n{last}")


ERROR_OUTPUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'


def notebook_cell(page: Any, notebook: Path, source: str, exact: bool = False) -> Any:
    """The cell of ``notebook`` open in ``page`` (a Playwright locator) whose source is, or starts
    with, ``source``; exactly one cell must match."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    matches = [
        i
        for i, cell in enumerate(nb.cells)
        if (cell.source.strip() == source if exact else cell.source.startswith(source))
    ]
    assert len(matches) == 1, f"{len(matches)} cells of {notebook.name} match {source!r}"
    return page.locator(".jp-Notebook .jp-Cell").nth(matches[0])


def run_all(page: Any, timeout_ms: float) -> None:
    """Run All Cells through the menu; wait until every code cell has its execution count and the
    kernel is idle, or stop early at the first traceback."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_text("Run All Cells", exact=True).click()
    page.wait_for_function(
        """(errorSelector) => {
            const errors = [...document.querySelectorAll(errorSelector)];
            if (errors.some(e => e.textContent.includes('Traceback'))) return true;
            const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
            const idle = document.querySelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]');
            return prompts.length > 0 && idle && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""",
        arg=ERROR_OUTPUT,
        timeout=timeout_ms,
        polling=250,
    )
