"""Apertium's rule-based translators, kept loaded: a language pair loads once, then a line costs milliseconds.

``apertium -u spa-eng`` loads a language pair's transducers and transfer rules for every text it
translates: ~200 ms before the first word. A server keeps them loaded, as a model server keeps its
weights in memory. :class:`ApertiumPipeline` starts a mode's pipeline of Apertium processes once,
in null-flush mode (``apertium-wblank-mode -z``, the way Apertium's own server runs it): each line
goes in as one NUL-terminated chunk in Apertium's stream format, and its translation comes back
NUL-terminated, in 2 to 10 ms. Each line is translated alone, so a line comes out the same whether
it is sent alone or in a batch.

Apertium (GPL) runs as external processes, never linked. Install it with ``make apertium`` or
``apt-get install apertium apertium-eng-spa apertium-fr-es``; :func:`require_apertium` says so
when it is missing.

Examples
--------
>>> escape("Hola [mundo] ~ a/b")
'Hola \\\\[mundo\\\\] [~] a\\\\/b[][\\n]'
>>> plain("The user \\\\[admin\\\\] [~] exists.[][\\n]")
'The user [admin] ~ exists.'
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from cloudflow_nb.errors import FlowError

__all__ = [
    "APERTIUM_PACKAGES",
    "END",
    "TIMEOUT_S",
    "ApertiumMissing",
    "ApertiumPipeline",
    "PipelineExited",
    "escape",
    "plain",
    "require_apertium",
]

APERTIUM_PACKAGES = ("apertium", "apertium-eng-spa", "apertium-fr-es")
TIMEOUT_S = 30.0  # most seconds one batch of lines may take before the pipeline is restarted
END = "[][\n]"  # the blank that ends every chunk sent (a line break, as apertium-destxt writes one)
_ESCAPED = frozenset("\\[]^$/<>@{}")  # characters of Apertium's stream format, escaped in text


class ApertiumMissing(FlowError, OSError):
    """Apertium, or one of its language pairs, is not installed."""


class PipelineExited(RuntimeError):
    """A pipeline's processes exited (killed, or crashed) before answering."""


def _install_hint() -> str:
    return f"install it with 'make apertium' or 'sudo apt-get install {' '.join(APERTIUM_PACKAGES)}'"


def require_apertium(modes: Sequence[str] = ("spa-eng", "fr-es")) -> str:
    """The ``apertium`` program's path, once it is known to have every one of ``modes``.

    Raises
    ------
    ApertiumMissing
        When the program or a language pair is not installed, saying what to install.
    """
    program = shutil.which("apertium")
    if program is None or shutil.which("apertium-wblank-mode") is None:
        raise ApertiumMissing(f"translation: the apertium program is not installed; {_install_hint()}")
    try:
        listed = subprocess.run([program, "-l"], capture_output=True, text=True, timeout=TIMEOUT_S).stdout.split()
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ApertiumMissing(f"translation: {program} -l failed ({exc}); {_install_hint()}") from exc
    missing = [mode for mode in modes if mode not in listed]
    if missing:
        raise ApertiumMissing(
            f"translation: apertium lacks the language pairs {missing} (it has {sorted(listed)}); {_install_hint()}"
        )
    return program


def mode_file(mode: str) -> Path:
    """Where Apertium keeps ``mode``'s pipeline (``$APERTIUM_DATADIR/modes``, as ``apertium`` looks)."""
    path = Path(os.environ.get("APERTIUM_DATADIR", "/usr/share/apertium")) / "modes" / f"{mode}.mode"
    if not path.is_file():
        raise ApertiumMissing(f"translation: apertium has no mode file {path}; {_install_hint()}")
    return path


def escape(line: str) -> str:
    """One line of plain text as one chunk of Apertium's stream format (what ``apertium-destxt`` makes)."""
    out = []
    for char in line:
        if char in _ESCAPED:
            out.append("\\" + char)
        elif char == "~":  # a post-generation mark inside words: pass it through as a blank
            out.append("[~]")
        else:
            out.append(char)
    return "".join(out) + END


def plain(chunk: str) -> str:
    """A translated chunk back to plain text: escapes undone, blanks' brackets dropped, ends stripped."""
    out = []
    escaped = False
    for char in chunk:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char not in "[]":
            out.append(char)
    return "".join(out).strip()


class ApertiumPipeline:
    """One Apertium mode (``"spa-eng"``) kept running; :meth:`run` sends it chunks of text.

    Not thread-safe: one caller at a time (a replica's thread; :class:`~.translation.Translator`
    holds a lock). A pipeline that hangs past :data:`TIMEOUT_S` or answers out of format is killed
    and started again on the next call; the call that saw it fails with ``RuntimeError``. One found
    dead is started again at once (:meth:`run`).
    The processes stop when the object is collected, or with their parent (their input closes).
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        wblank = shutil.which("apertium-wblank-mode")
        if wblank is None:
            raise ApertiumMissing(f"translation: apertium-wblank-mode is not installed; {_install_hint()}")
        made = subprocess.run([wblank, "-z", str(mode_file(mode))], capture_output=True, text=True, timeout=TIMEOUT_S)
        if made.returncode != 0:
            raise ApertiumMissing(f"translation: apertium-wblank-mode failed on {mode}: {made.stderr.strip()[-300:]}")
        self._script = made.stdout
        self._process: subprocess.Popen[bytes] | None = None
        self._pending = b""  # bytes read past the last answer
        self._stop: weakref.finalize | None = None

    def run(self, chunks: Sequence[str], timeout: float = TIMEOUT_S) -> list[str]:
        """Each chunk's translation, in order, in Apertium's stream format (:func:`escape` makes a
        chunk of a line, :func:`plain` a line of an answer; one mode's answers feed the next mode).

        A writer thread feeds the chunks while answers are read, so the pipeline's processes work
        on several lines at once. A pipeline found dead (it died since the last call, or as this one
        began) is started again and the chunks sent once more; one that dies again, hangs past
        ``timeout`` seconds or answers out of format fails the call.
        """
        if not chunks:
            return []
        try:
            return self._exchange(chunks, timeout)
        except PipelineExited:
            return self._exchange(chunks, timeout)

    def _exchange(self, chunks: Sequence[str], timeout: float) -> list[str]:
        process = self._running()
        payload = b"".join(chunk.encode() + b"\0" for chunk in chunks)
        writer = threading.Thread(target=_write, args=(process, payload), daemon=True)
        writer.start()
        deadline = time.monotonic() + timeout
        try:
            answers = [self._answer(process, deadline) for _ in chunks]
        except BaseException:
            self.close()
            raise
        finally:
            writer.join(timeout)
        if not all(answer.endswith(END) for answer in answers):
            self.close()
            raise RuntimeError(f"apertium {self.mode}: an answer came back out of format; the pipeline restarts")
        return answers

    @property
    def pid(self) -> int | None:
        """The running pipeline's process group (its shell's pid), None before the first call or after :meth:`close`."""
        return None if self._process is None else self._process.pid

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            self.close()
            self._process = subprocess.Popen(
                ["bash", "-c", self._script, self.mode, "-n", ""],  # -n: unknown words unmarked (apertium -u)
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # one process group: closing kills every process of the pipeline
            )
            self._pending = b""
            self._stop = weakref.finalize(self, _kill, self._process)
        return self._process

    def _answer(self, process: subprocess.Popen[bytes], deadline: float) -> str:
        """The next NUL-terminated answer (tools flush with extra NULs: empty answers are skipped)."""
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while True:
                self._pending = self._pending.lstrip(b"\0")
                if b"\0" in self._pending:
                    answer, _, self._pending = self._pending.partition(b"\0")
                    return answer.decode("utf-8", errors="replace")
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise RuntimeError(f"apertium {self.mode} gave no answer in time; the pipeline restarts")
                data = os.read(process.stdout.fileno(), 1 << 16)
                if not data:
                    raise PipelineExited(f"apertium {self.mode} exited with {process.wait()}")
                self._pending += data

    def close(self) -> None:
        """Stop the pipeline's processes (the next :meth:`run` starts them again)."""
        if self._stop is not None:
            self._stop()
        self._process = self._stop = None


def _write(process: subprocess.Popen[bytes], payload: bytes) -> None:
    assert process.stdin is not None
    with contextlib.suppress(OSError, ValueError):  # the pipeline died, or was closed: the reader says why
        process.stdin.write(payload)
        process.stdin.flush()


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(OSError, ValueError):
        if process.stdin:
            process.stdin.close()
    with contextlib.suppress(OSError, ValueError):
        if process.stdout:
            process.stdout.close()
    process.wait()
