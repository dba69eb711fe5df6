"""Per-request overhead of a deployment, side by side on one cluster.

Runs, on one 2-worker LocalCluster (worker processes): the function called in-process, raw
``client.submit(f).result()`` through the scheduler, a deployed one-stage no-op flow, and a
deployed four-stage flow (unfused: four replica hops). Prints median and p99 of each and the
ratios against the design targets: deployed no-op at most 0.15x the raw submit median and at most
1 ms above the in-process call.

Run: ``python benchmarks/overhead.py [--quick]`` (about a minute; ``--quick``: 300 requests per case).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from common import parse_args

import cloudflow_nb as cf


def noop(row):
    return row["x"]


def measure(call: Callable[[int], object], n: int, warmup: int = 50) -> list[float]:
    """Wall-clock seconds of ``n`` closed-loop calls after ``warmup`` untimed ones."""
    for i in range(warmup):
        call(i)
    times = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
    return times


def p99(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    n = 300 if args.quick else 2000
    flow = cf.Flow("noop", x=int)
    one = flow.map(noop, names={"y": int})
    four = one.map(noop, names={"y2": int}).map(noop, names={"y3": int}).map(noop, names={"y4": int})
    row = {"x": 1}
    results: dict[str, list[float]] = {}
    with cf.LocalCluster(workers=2, gpu_workers=0, dashboard=False) as cluster:
        results["in-process call"] = measure(lambda i: noop(row), n * 10)
        results["client.submit(f).result()"] = measure(
            lambda i: cluster.client.submit(noop, {"x": i}, pure=False).result(), max(200, n // 5)
        )
        with cluster.deploy(one) as dep:
            results["deployed 1-stage no-op"] = measure(lambda i: dep.predict({"x": i}), n)
        with cluster.deploy(four, optimize=cf.Optimize(fusion=False)) as dep:
            assert len(dep.plan.stages) == 4
            results["deployed 4-stage (unfused)"] = measure(lambda i: dep.predict({"x": i}), n)

    raw = statistics.median(results["client.submit(f).result()"])
    local = statistics.median(results["in-process call"])
    print(f"{'case':<30} {'median ms':>10} {'p99 ms':>10} {'x submit':>10} {'+ms vs call':>12}")
    for name, times in results.items():
        med = statistics.median(times)
        print(
            f"{name:<30} {med * 1e3:>10.3f} {p99(times) * 1e3:>10.3f} {med / raw:>10.3f} {(med - local) * 1e3:>12.3f}"
        )
    noop_med = statistics.median(results["deployed 1-stage no-op"])
    ratio, added = noop_med / raw, (noop_med - local) * 1e3
    print()
    print(
        f"deployed no-op / raw submit (median): {ratio:.3f}x (target <= 0.15x): {'met' if ratio <= 0.15 else 'MISSED'}"
    )
    print(f"deployed no-op - in-process (median): {added:.3f} ms (target <= 1 ms): {'met' if added <= 1 else 'MISSED'}")


if __name__ == "__main__":
    main()
