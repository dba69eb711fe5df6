"""Data locality for dynamic lookups: routing the lookup's stage to the worker holding the key.

The paper's benchmark (section 3.1): ``map(key of request i // 10)`` -> ``lookup(key,
dynamic=True)`` -> ``map(sum)`` over 100 float64 arrays of 8 KB, 4 MB or 8 MB in the store, each
read by 10 consecutive requests; locality on vs off, both deployed at once and taking turns on
each request. Target: at least 2x faster at 8 MB.

Run: ``python benchmarks/locality.py [--quick]``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from common import markdown_table, parse_args, summary

import cloudflow_nb as cf

SIZES = {"8 KB": 1024, "4 MB": 512 * 1024, "8 MB": 1024 * 1024}
READS = 10


def key_of(row):
    return f"data-{row['i'] // READS}"


def total(row):
    return float(np.sum(row["data"]))


def flow() -> cf.Flow:
    """Key from the request, dynamic lookup, then the array's sum (replacing the array)."""
    f = cf.Flow("locality", i=int).map(key_of, names={"key": str})
    f = f.lookup("key", dynamic=True, into="data", type=np.ndarray)
    return f.map(total, names={"data": float})


def interleaved(deployments: dict[bool, Any], count: int) -> dict[bool, list[float]]:
    """Latencies (ms) of requests ``0 .. count - 1``, each sent to every deployment in turn."""
    out: dict[bool, list[float]] = {k: [] for k in deployments}
    for i in range(-READS, count):
        for key, dep in deployments.items():
            start = time.perf_counter()
            dep.predict({"i": max(i, 0)})
            if i >= 0:
                out[key].append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    objects = 20 if args.quick else 100
    sizes = {k: v for k, v in SIZES.items() if not (args.quick and k == "4 MB")}
    results: dict[tuple[str, bool], dict[str, float]] = {}
    rng = np.random.default_rng(0)
    with cf.LocalCluster(workers=2, gpu_workers=0, dashboard=False) as cluster:
        for label, n in sizes.items():
            cluster.store.update({f"data-{k}": rng.random(n) for k in range(objects)})
            with (
                cluster.deploy(flow(), optimize=cf.Optimize(locality=False)) as off,
                cluster.deploy(flow(), optimize=cf.Optimize(locality=True)) as on,
            ):
                # the two deployments take turns on each request, so drift on the machine hits both
                latencies = interleaved({False: off, True: on}, objects * READS)
            for local, values in latencies.items():
                results[label, local] = summary(values)
            cluster.store.clear()
    rows = []
    for label in sizes:
        off, on = results[label, False], results[label, True]
        rows.append([label, off["median"], on["median"], off["p99"], on["p99"], f"{off['mean'] / on['mean']:.1f}x"])
    headers = ["object", "off median ms", "on median ms", "off p99 ms", "on p99 ms", "speedup (mean)"]
    print(f"## Locality: {objects} objects, each read by {READS} consecutive requests, locality off vs on\n")
    print(markdown_table(headers, rows))
    off, on = results["8 MB", False], results["8 MB", True]
    ratio = off["mean"] / on["mean"]
    verdict = "met" if ratio >= 2 else "NOT met"
    print(f"\nTarget (8 MB, locality at least 2x faster on mean latency): {ratio:.1f}x, {verdict}")


if __name__ == "__main__":
    main()
