"""Shared fixtures: the engines every operator test runs on, and the serving cluster."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

import cloudflow_nb as cf

Runner = Callable[..., cf.Table]


def _run_local(flow: cf.Flow, request: Any, store: Mapping[str, Any] | None = None) -> cf.Table:
    return flow.run(request, store=store)


@pytest.fixture(scope="session")
def serving_cluster() -> Iterator[Any]:
    """One embedded cluster for the session: 2 CPU workers and 1 GPU-tagged worker (processes)."""
    with cf.LocalCluster(workers=2, gpu_workers=1, dashboard=False) as cluster:
        yield cluster


def _run_on_cluster(cluster: Any) -> Runner:
    def run(flow: cf.Flow, request: Any, store: Mapping[str, Any] | None = None) -> cf.Table:
        if store:
            cluster.store.update(store)
        try:
            with cluster.deploy(flow) as deployment:
                return deployment.predict(request, timeout=60)
        finally:
            if store:
                cluster.store.clear()

    return run


@pytest.fixture(params=["local", pytest.param("cluster", marks=pytest.mark.cluster)])
def run(request: pytest.FixtureRequest) -> Runner:
    """``run(flow, request, store=None) -> cf.Table`` on each engine; results must agree.

    ``cluster`` deploys the flow on the session's LocalCluster (the store dict goes into
    ``cluster.store`` first and is cleared after) and calls ``predict``.
    """
    if request.param == "local":
        return _run_local
    return _run_on_cluster(request.getfixturevalue("serving_cluster"))
