"""Golden files for the optimizer's text and graph renderings (in ``tests/snapshots/optimize``).

``check(name, text)`` compares ``text`` exactly with ``tests/snapshots/optimize/<name>``; run the
tests with ``CFNB_UPDATE_SNAPSHOTS=1`` to rewrite the files after an intended change.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

__all__ = ["UPDATE_ENV", "check"]

UPDATE_ENV = "CFNB_UPDATE_SNAPSHOTS"
GOLDEN = Path(__file__).parent / "optimize"


def check(name: str, text: str) -> None:
    """Fail unless ``text`` equals the golden file ``name`` (rewrite it when updating)."""
    path = GOLDEN / name
    actual = text if text.endswith("\n") else text + "\n"
    if os.environ.get(UPDATE_ENV) == "1":
        path.write_text(actual, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"missing golden file {path}; create it with {UPDATE_ENV}=1")
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), "golden", "actual"))
        pytest.fail(f"{name} differs from its golden file ({UPDATE_ENV}=1 rewrites it):\n{diff}")
