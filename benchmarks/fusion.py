"""Operator fusion: a chain of identity maps over a bytes, numpy or torch payload, fused vs unfused.

The paper's fusion micro-benchmark (section 3.1): chains of 2 to 10 maps, payloads of 10 KB,
500 KB and 10 MB, sequential requests, median and p99 latency. Target: fusion at least 4x faster
at 500 KB (8 maps). Every chain is deployed three times side by side on one cluster, over
``bytes``, a float64 numpy array and a float32 torch tensor of the same size, and requests
alternate between them in rounds (so that a noisy neighbour hits all three alike). Target: the
fused 8-map chain over a 500 KB array (and tensor) answers within 1.2x of the one over 500 KB
of bytes (median).

Run: ``python benchmarks/fusion.py [--quick]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from common import markdown_table, parse_args, sequential, summary

import cloudflow_nb as cf

PAYLOADS = {"10 KB": 10 * 1024, "500 KB": 500 * 1024, "10 MB": 10 * 1024 * 1024}
KINDS = ("bytes", "numpy", "torch")
ROUNDS = 5


def identity(row):
    return row["payload"]


def column_type(kind: str) -> type:
    return {"bytes": bytes, "numpy": np.ndarray, "torch": torch.Tensor}[kind]


def payload(kind: str, size: int) -> Any:
    """``size`` bytes of ``kind``."""
    if kind == "bytes":
        return b"x" * size
    if kind == "numpy":
        return np.ones(size // 8)
    return torch.ones(size // 4)


def chain(length: int, kind: str = "bytes") -> cf.Flow:
    """``length`` identity maps over the ``payload`` column."""
    tp = column_type(kind)
    flow = cf.Flow("fusion", payload=tp)
    for i in range(length):
        flow = flow.map(identity, names={"payload": tp}, name=f"m{i}")
    return flow


def requests_for(size: int, quick: bool) -> int:
    if size >= 10 * 1024 * 1024:
        return 8 if quick else 30
    return 20 if quick else 100


def measure(cluster: Any, length: int, fused: bool, payloads: dict[str, int], quick: bool) -> dict[tuple, dict]:
    """Summaries by ``(kind, payload label)`` for one chain length, the kinds deployed side by side."""
    options = cf.Optimize(fusion=fused)
    deps = {kind: cluster.deploy(chain(length, kind), optimize=options) for kind in KINDS}
    out = {}
    try:
        for label, size in payloads.items():
            requests = {kind: {"payload": payload(kind, size)} for kind in KINDS}
            per_round = max(1, requests_for(size, quick) // ROUNDS)
            latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for _ in range(ROUNDS):
                for kind in KINDS:
                    dep, request = deps[kind], requests[kind]
                    latencies[kind] += sequential(lambda _, d=dep, r=request: d.predict(r), per_round, warmup=2)
            for kind in KINDS:
                out[kind, label] = summary(latencies[kind])
    finally:
        for dep in deps.values():
            dep.close()
    return out


def main() -> None:
    torch.set_num_threads(1)
    args = parse_args(__doc__.splitlines()[0])
    lengths = [2, 8] if args.quick else [2, 4, 6, 8, 10]
    payloads = {k: v for k, v in PAYLOADS.items() if not (args.quick and v > 1024 * 1024)}
    results: dict[tuple[int, str, str, bool], dict[str, float]] = {}
    with cf.LocalCluster(workers=2, gpu_workers=0, dashboard=False) as cluster:
        for length in lengths:
            for fused in (False, True):
                for (kind, label), stats in measure(cluster, length, fused, payloads, args.quick).items():
                    results[length, kind, label, fused] = stats
    rows = []
    for length in lengths:
        for label in payloads:
            for kind in KINDS:
                off, on = results[length, kind, label, False], results[length, kind, label, True]
                base = results[length, "bytes", label, True]["median"]
                rows.append(
                    [
                        length,
                        label,
                        kind,
                        off["median"],
                        on["median"],
                        off["p99"],
                        on["p99"],
                        f"{off['median'] / on['median']:.1f}x",
                        f"{on['median'] / base:.2f}x",
                    ]
                )
    headers = [
        "maps",
        "payload",
        "type",
        "unfused median ms",
        "fused median ms",
        "unfused p99 ms",
        "fused p99 ms",
        "speedup",
        "fused / bytes",
    ]
    print("## Fusion: chain of identity maps, fused vs unfused (sequential requests)\n")
    print(markdown_table(headers, rows))
    target = results.get((8, "bytes", "500 KB", False)), results.get((8, "bytes", "500 KB", True))
    if all(target):
        ratio = target[0]["median"] / target[1]["median"]
        verdict = "met" if ratio >= 4 else "NOT met"
        print(f"\nTarget (8 maps, 500 KB bytes, fused at least 4x faster): {ratio:.1f}x, {verdict}")
        base = target[1]["median"]
        for kind in ("numpy", "torch"):
            ratio = results[8, kind, "500 KB", True]["median"] / base
            verdict = "met" if ratio <= 1.2 else "NOT met"
            print(f"Target (8 fused maps, 500 KB {kind} within 1.2x of bytes, median): {ratio:.2f}x, {verdict}")


if __name__ == "__main__":
    main()
