"""cloudflow_nb: low-latency prediction serving as dataflow, in notebooks, on Dask.

Examples
--------
>>> import cloudflow_nb as cf
>>> flow = cf.Flow("hello", x=int).map(lambda row: row["x"] + 1, names={"y": int})
>>> flow.run({"x": 41})[0]["y"]
42
"""

from __future__ import annotations

from typing import Any

from cloudflow_nb.compare import Comparison, compare
from cloudflow_nb.errors import (
    DeploymentError,
    FlowError,
    FlowTimeoutError,
    MissingKeyError,
    OperatorError,
    OptimizerError,
    OverloadError,
    SchemaError,
)
from cloudflow_nb.flow import Flow, GroupedFlow
from cloudflow_nb.optimize import Optimize, optimize_until
from cloudflow_nb.physical import Plan, Stage
from cloudflow_nb.runtime.device import device
from cloudflow_nb.table import Row, Schema, Table

__version__ = "0.1.0"

__all__ = [
    "Autoscale",
    "Cluster",
    "Comparison",
    "Dashboard",
    "Deployment",
    "DeploymentError",
    "Endpoint",
    "Flow",
    "FlowError",
    "FlowTimeoutError",
    "GroupedFlow",
    "LocalCluster",
    "MissingKeyError",
    "OperatorError",
    "Optimize",
    "OptimizerError",
    "OverloadError",
    "Plan",
    "PlanExplorer",
    "Row",
    "Schema",
    "SchemaError",
    "Stage",
    "Table",
    "compare",
    "connect",
    "dashboard",
    "device",
    "explore",
    "optimize_until",
    "serve",
    "watch",
]

# The runtime and the notebook edge pull in distributed, ipywidgets and bokeh: load them on first use.
_LAZY = {
    "Cluster": "cloudflow_nb.runtime.cluster",
    "LocalCluster": "cloudflow_nb.runtime.cluster",
    "connect": "cloudflow_nb.runtime.cluster",
    "Deployment": "cloudflow_nb.runtime.deployment",
    "Autoscale": "cloudflow_nb.runtime.autoscale",
    "Dashboard": "cloudflow_nb.live",
    "dashboard": "cloudflow_nb.live",
    "PlanExplorer": "cloudflow_nb.widgets",
    "Endpoint": "cloudflow_nb.endpoint",
    "serve": "cloudflow_nb.endpoint",
    "explore": "cloudflow_nb.widgets",
    "watch": "cloudflow_nb.liveview",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cloudflow_nb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext cloudflow_nb``: register the cell magics."""
    from cloudflow_nb.magics import register

    register(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext cloudflow_nb``: remove the cell magics."""
    from cloudflow_nb.magics import unregister

    unregister(ipython)
