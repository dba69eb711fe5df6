"""``make demo``: the real image cascade on real photos, locally and on an embedded Dask cluster.

It labels scikit-image's photos with MobileNetV2 (real ImageNet weights); the photos it is unsure
of also go to a ResNet-101 with random weights (compute-faithful, labels meaningless). It prints
the plans, the labels, then latency, throughput and per-stage figures of the unoptimized and the
optimized deployment, measured side by side: requests alternate between the two, so both see
the same machine load.

Run ``python -m cloudflow_nb.examples.demo [--requests N] [--small]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from concurrent.futures import wait
from typing import Any

import numpy as np

import cloudflow_nb as cf
from cloudflow_nb.examples import image_cascade

__all__ = ["main", "plural", "stage_lines"]


def plural(count: int, noun: str) -> str:
    """``"1 stage"``, ``"3 stages"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _ms(values: Sequence[float]) -> str:
    return f"p50 {np.percentile(values, 50):6.1f} ms, p99 {np.percentile(values, 99):6.1f} ms"


def _latencies(deps: dict[str, cf.Deployment], requests: list[dict]) -> dict[str, tuple[list[float], list[Any]]]:
    """One request at a time, alternating between the deployments: latencies (ms) and result rows."""
    out: dict[str, tuple[list[float], list[Any]]] = {name: ([], []) for name in deps}
    for request in requests:
        for name, dep in deps.items():
            start = time.perf_counter()
            row = dep.predict(request)[0]
            out[name][0].append((time.perf_counter() - start) * 1e3)
            out[name][1].append(row)
    return out


def _burst(dep: cf.Deployment, requests: list[dict], clients: int) -> tuple[float, list[Any]]:
    """Seconds to serve ``requests`` with up to ``clients`` in flight, and the result rows."""
    start = time.perf_counter()
    pending: set = set()
    futures = []
    for request in requests:
        if len(pending) >= clients:
            _, pending = wait(pending, return_when="FIRST_COMPLETED")
        future = dep.submit(request)
        pending.add(future)
        futures.append(future)
    rows = [f.result()[0] for f in futures]
    return time.perf_counter() - start, rows


def _throughput(
    deps: dict[str, cf.Deployment], requests: list[dict], clients: int, rounds: int
) -> dict[str, tuple[float, list[Any]]]:
    """Requests per second per deployment, bursts interleaved round by round, and the result rows."""
    seconds = dict.fromkeys(deps, 0.0)
    rows: dict[str, list[Any]] = {name: [] for name in deps}
    for i in range(rounds):
        order = list(deps) if i % 2 == 0 else list(reversed(deps))  # neither always goes first
        for name in order:
            took, got = _burst(deps[name], requests, clients)
            seconds[name] += took
            rows[name] += got
    return {name: (len(rows[name]) / seconds[name], rows[name]) for name in deps}


def stage_lines(stats: dict[str, Any], workers: dict[str, str]) -> list[str]:
    """One line per stage of ``dep.stats()``: requests, latency, batching and where it runs.

    ``workers`` names each worker address (``"gpu-worker-0"``...). A stage sees every request of
    its deployment: those it ran, and those the filter before it left without rows, answered
    without a call; so its ``requests`` count is the deployment's request count.
    """
    lines = []
    for name, s in stats["stages"].items():
        where = sorted({f"{workers.get(r['worker'], r['worker'])} ({r['device']})" for r in s["replicas"]})
        batch = f", mean batch {s.get('mean_batch', 0)}" if s["batching"] else ""
        kind = "GPU stage" if s["gpu"] else "CPU stage"
        skipped = f" ({s['skipped']} without rows)" if s["skipped"] else ""
        lines.append(
            f"  {name:<34} {s['count'] + s['skipped']:>5} requests{skipped}, p50 {s['p50_ms'] or 0:7.1f} ms{batch}  "
            f"[{kind} on {', '.join(where) or 'the router'}]"
        )
    return lines


def _worker_names(cluster: cf.LocalCluster) -> dict[str, str]:
    names: dict[str, str] = {}
    for info in sorted(cluster.workers(), key=lambda w: (w.gpu, w.address)):
        kind = "gpu-worker" if info.gpu else "worker"
        names[info.address] = f"{kind}-{sum(n.startswith(kind) for n in names.values())}"
    return names


def main(requests: int = 12, small: bool = False, clients: int = 8, rounds: int = 2) -> None:
    """Label the photos locally, then serve them deployed before and after optimization."""
    print("fetching or loading MobileNetV2's ImageNet weights and the class names ...", flush=True)
    image_cascade.setup()
    flow = image_cascade.flow(small=small)
    print(f"\n{flow.explain(optimized=False)}\n")
    print(cf.compare(flow))

    photos = image_cascade.photos()
    print("\nlocal engine, real photos (MobileNetV2 has real ImageNet weights; the ResNet has random ones):")
    for name, row in zip(photos, flow.run([{"image": p} for p in photos.values()]), strict=True):
        extra = "also sent to the random-weight ResNet" if row["label2"] is not None else "confident"
        print(f"  {name:<17} -> {row['label']!r} ({row['conf']:.2f}, {row['model']}; {extra})")

    traffic = image_cascade.requests(requests)
    variants = {"unoptimized": False, "optimized": cf.Optimize()}
    with cf.LocalCluster(workers=2, gpu_workers=1) as cluster:
        workers = _worker_names(cluster)
        print(f"\n{cluster!r}: requests alternate between the deployments, so both share the same load")
        deps = {title: cluster.deploy(flow, optimize=options) for title, options in variants.items()}
        try:
            warm = _latencies(deps, traffic[:4])
            served = _latencies(deps, traffic)
            rates = _throughput(deps, traffic, clients, rounds)
            base = np.percentile(served["unoptimized"][0], 50)
            for title, dep in deps.items():
                rows = warm[title][1] + served[title][1] + rates[title][1]
                sent = sum(r["label2"] is not None for r in rows)
                latencies = served[title][0]
                print(
                    f"\n{title}: {plural(len(dep.plan.stages), 'stage')}, {plural(len(rows), 'request')} "
                    f"served, {sent} of them also sent to the random-weight ResNet"
                )
                print(
                    f"  latency {_ms(latencies)} ({np.percentile(latencies, 50) / base:.2f}x unoptimized), "
                    f"{rates[title][0]:.1f} requests/s with {clients} in flight"
                )
                print("\n".join(stage_lines(dep.stats(), workers)))
            labels = [(r["label"], round(r["conf"], 2)) for r in served["optimized"][1][:6]]
            print("\nfirst answers of the optimized deployment:", labels)
        finally:
            for dep in deps.values():
                dep.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12, help="requests per deployment per phase")
    parser.add_argument("--small", action="store_true", help="ResNet-50 in place of ResNet-101")
    args = parser.parse_args()
    main(args.requests, args.small)
