"""Real ``dask scheduler`` and ``dask worker`` processes for the multi-process and fault tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

__all__ = ["free_port", "spawn_dask"]


def free_port() -> int:
    """A port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_dask(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -m dask *args`` seeing this process's ``sys.path`` (plus ``env``), output discarded."""
    full = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "dask", *args], env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
