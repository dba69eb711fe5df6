"""What ``GET /readyz`` answers: whether a deployment can serve, judged from its stats (pure).

``/healthz`` (liveness) needs no judgement: the process answers. Readiness, the Kubernetes
convention: the deployment is open, holds its lease, and every stage that runs on workers has at
least one live replica (a stage run in the router needs none).

Examples
--------
>>> not_ready({"lease": {"lost": None}, "stages": {"double": {"in_router": False, "replicas": []}}})
["stage 'double' has no live replica"]
"""

from __future__ import annotations

from typing import Any

__all__ = ["not_ready"]


def not_ready(stats: dict[str, Any]) -> list[str]:
    """Why a deployment with these ``dep.stats()`` cannot serve; empty when it is ready."""
    reasons = []
    if stats["lease"]["lost"]:
        reasons.append(str(stats["lease"]["lost"]))
    for name, stage in stats["stages"].items():
        if not stage["in_router"] and not stage["replicas"]:
            reasons.append(f"stage {name!r} has no live replica")
    return reasons
