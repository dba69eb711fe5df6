"""Shared fixtures: the engine every operator test runs on."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

import cloudflow_nb as cf

Runner = Callable[..., cf.Table]


def _run_local(flow: cf.Flow, request: Any, store: Mapping[str, Any] | None = None) -> cf.Table:
    return flow.run(request, store=store)


@pytest.fixture(params=["local"])
def run(request: pytest.FixtureRequest) -> Runner:
    """``run(flow, request, store=None) -> cf.Table`` on each engine; results must agree."""
    return _run_local
