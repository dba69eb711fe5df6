"""Operator fusion: a chain of identity maps over a bytes payload, fused vs unfused deployment.

The paper's fusion micro-benchmark (section 3.1): chains of 2 to 10 maps, payloads of 10 KB,
500 KB and 10 MB, sequential requests, median and p99 latency. Target: fusion at least 4x faster
at 500 KB (8 maps).

Run: ``python benchmarks/fusion.py [--quick]``.
"""

from __future__ import annotations

from common import markdown_table, parse_args, sequential, summary

import cloudflow_nb as cf

PAYLOADS = {"10 KB": 10 * 1024, "500 KB": 500 * 1024, "10 MB": 10 * 1024 * 1024}


def identity(row):
    return row["payload"]


def chain(length: int) -> cf.Flow:
    """``length`` identity maps over the ``payload`` column."""
    flow = cf.Flow("fusion", payload=bytes)
    for i in range(length):
        flow = flow.map(identity, names={"payload": bytes}, name=f"m{i}")
    return flow


def requests_for(size: int, quick: bool) -> int:
    if size >= 10 * 1024 * 1024:
        return 8 if quick else 30
    return 20 if quick else 100


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    lengths = [2, 8] if args.quick else [2, 4, 6, 8, 10]
    payloads = {k: v for k, v in PAYLOADS.items() if not (args.quick and v > 1024 * 1024)}
    results: dict[tuple[int, str, bool], dict[str, float]] = {}
    with cf.LocalCluster(workers=2, gpu_workers=0, dashboard=False) as cluster:
        for length in lengths:
            for fused in (False, True):
                with cluster.deploy(chain(length), optimize=cf.Optimize(fusion=fused)) as dep:
                    for label, size in payloads.items():
                        request = {"payload": b"x" * size}
                        latencies = sequential(lambda _, r=request: dep.predict(r), requests_for(size, args.quick))
                        results[length, label, fused] = summary(latencies)
    rows = []
    for length in lengths:
        for label in payloads:
            off, on = results[length, label, False], results[length, label, True]
            rows.append(
                [
                    length,
                    label,
                    off["median"],
                    on["median"],
                    off["p99"],
                    on["p99"],
                    f"{off['median'] / on['median']:.1f}x",
                ]
            )
    headers = ["maps", "payload", "unfused median ms", "fused median ms", "unfused p99 ms", "fused p99 ms", "speedup"]
    print("## Fusion: chain of identity maps, fused vs unfused (sequential requests)\n")
    print(markdown_table(headers, rows))
    target = results.get((8, "500 KB", False)), results.get((8, "500 KB", True))
    if all(target):
        ratio = target[0]["median"] / target[1]["median"]
        verdict = "met" if ratio >= 4 else "NOT met"
        print(f"\nTarget (8 maps, 500 KB, fused at least 4x faster): {ratio:.1f}x, {verdict}")


if __name__ == "__main__":
    main()
