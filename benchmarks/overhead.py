"""Per-request overhead of a deployment, side by side on one cluster.

Runs, on one 2-worker LocalCluster (worker processes): the function called in-process, raw
``client.submit(f).result()`` through the scheduler, a deployed one-stage no-op flow, and a
deployed four-stage flow (unfused: four replica hops); then the one-stage no-op again on a TLS
cluster (``security=True``: the fast path over TLS, handshake once per connection). Prints median
and p99 of each and the ratios against the design targets: deployed no-op at most 0.15x the raw
submit median and at most 1 ms above the in-process call.

Run: ``python benchmarks/overhead.py [--quick]`` (about a minute; ``--quick``: 300 requests per case).
"""

from __future__ import annotations

from common import parse_args, sequential, summary

import cloudflow_nb as cf


def noop(row):
    return row["x"]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    n = 300 if args.quick else 2000
    flow = cf.Flow("noop", x=int)
    one = flow.map(noop, names={"y": int})
    four = one.map(noop, names={"y2": int}).map(noop, names={"y3": int}).map(noop, names={"y4": int})
    row = {"x": 1}
    results: dict[str, list[float]] = {}
    with cf.LocalCluster(workers=2, gpu_workers=0, dashboard=False) as cluster:
        results["in-process call"] = sequential(lambda i: noop(row), n * 10, warmup=50)
        results["client.submit(f).result()"] = sequential(
            lambda i: cluster.client.submit(noop, {"x": i}, pure=False).result(), max(200, n // 5), warmup=50
        )
        with cluster.deploy(one) as dep:
            results["deployed 1-stage no-op"] = sequential(lambda i: dep.predict({"x": i}), n, warmup=50)
        with cluster.deploy(four, optimize=cf.Optimize(fusion=False)) as dep:
            assert len(dep.plan.stages) == 4
            results["deployed 4-stage (unfused)"] = sequential(lambda i: dep.predict({"x": i}), n, warmup=50)
    with cf.LocalCluster(workers=2, gpu_workers=0, dashboard=False, security=True) as tls, tls.deploy(one) as dep:
        results["deployed 1-stage no-op (TLS)"] = sequential(lambda i: dep.predict({"x": i}), n, warmup=50)
        assert dep._router.fast.fallbacks == 0, "a TLS cluster keeps the fast path"

    stats = {name: summary(times) for name, times in results.items()}
    raw = stats["client.submit(f).result()"]["median"]
    local = stats["in-process call"]["median"]
    print(f"{'case':<30} {'median ms':>10} {'p99 ms':>10} {'x submit':>10} {'+ms vs call':>12}")
    for name, st in stats.items():
        med = st["median"]
        print(f"{name:<30} {med:>10.3f} {st['p99']:>10.3f} {med / raw:>10.3f} {med - local:>12.3f}")
    noop_med = stats["deployed 1-stage no-op"]["median"]
    ratio, added = noop_med / raw, noop_med - local
    print()
    print(
        f"deployed no-op / raw submit (median): {ratio:.3f}x (target <= 0.15x): {'met' if ratio <= 0.15 else 'MISSED'}"
    )
    print(f"deployed no-op - in-process (median): {added:.3f} ms (target <= 1 ms): {'met' if added <= 1 else 'MISSED'}")


if __name__ == "__main__":
    main()
