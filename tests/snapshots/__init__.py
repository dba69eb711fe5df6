"""Golden files for text and graph renderings: ``core/`` (logical plans), ``optimize/`` (physical).

``check(name, text, folder)`` compares ``text`` exactly with ``tests/snapshots/<folder>/<name>``;
run the tests with ``CFNB_UPDATE_SNAPSHOTS=1`` to rewrite the files after an intended change.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

__all__ = ["UPDATE_ENV", "check"]

UPDATE_ENV = "CFNB_UPDATE_SNAPSHOTS"
GOLDEN = Path(__file__).parent


def check(name: str, text: str, folder: str = "optimize") -> None:
    """Fail unless ``text`` equals the golden file ``folder/name`` (rewrite it when updating)."""
    path = GOLDEN / folder / name
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
