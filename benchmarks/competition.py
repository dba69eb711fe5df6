"""Competitive execution: a high-variance stage raced by 1 to 3 replicas on distinct workers.

The paper's benchmark (section 3.1): ``map(+1)`` -> a map sleeping 10 ms x Gamma(shape 3, scale s)
for s = 1, 2, 4 (means 30, 60, 120 ms), marked ``high_variance`` -> ``map(identity)``; sequential
requests with a pause so that losing replicas finish. Target: 3 racing replicas give at most
0.5x the single replica's p99, with a median no worse.

Run: ``python benchmarks/competition.py [--quick]``.
"""

from __future__ import annotations

import random
import time

from common import markdown_table, parse_args, sequential, summary

import cloudflow_nb as cf

SCALES = [1.0, 2.0, 4.0]


def increment(row):
    return row["val"] + 1


def identity(row):
    return row["val"]


def make_sleeper(scale: float):
    def gamma_sleep(row):
        time.sleep(0.010 * random.gammavariate(3.0, scale))
        return row["val"]

    return gamma_sleep


def flow(scale: float) -> cf.Flow:
    """``+1`` -> high-variance sleep -> identity."""
    f = cf.Flow("compete", val=int).map(increment, names={"val": int})
    f = f.map(make_sleeper(scale), names={"val": int}, high_variance=True, name="gamma_sleep")
    return f.map(identity, names={"val": int})


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count = 40 if args.quick else 200
    scales = SCALES[:1] if args.quick else SCALES
    results: dict[tuple[float, int], dict[str, float]] = {}
    with cf.LocalCluster(workers=3, gpu_workers=0, dashboard=False) as cluster:
        for scale in scales:
            pause = 0.060 * scale  # twice the mean sleep: racing losers finish before the next request
            for replicas in (1, 2, 3):
                with cluster.deploy(flow(scale), optimize=cf.Optimize(compete=replicas)) as dep:
                    latencies = sequential(lambda i: dep.predict({"val": i}), count, pause=pause)
                    results[scale, replicas] = summary(latencies)
    rows = []
    for scale in scales:
        base = results[scale, 1]
        for replicas in (1, 2, 3):
            r = results[scale, replicas]
            rows.append(
                [
                    f"{30 * scale:.0f} ms",
                    replicas,
                    r["median"],
                    r["p99"],
                    r["median"] / base["median"],
                    r["p99"] / base["p99"],
                ]
            )
    headers = ["mean sleep", "racing replicas", "median ms", "p99 ms", "median / 1 replica", "p99 / 1 replica"]
    print(f"## Competitive execution: Gamma(3, s) x 10 ms stage, {count} sequential requests\n")
    print(markdown_table(headers, rows))
    print()
    for scale in scales:
        p99 = results[scale, 3]["p99"] / results[scale, 1]["p99"]
        median = results[scale, 3]["median"] / results[scale, 1]["median"]
        verdict = "met" if p99 <= 0.5 and median <= 1.0 else "NOT met"
        print(
            f"Target (s={scale:g}, 3 replicas: p99 <= 0.5x, median <= 1x): "
            f"p99 {p99:.2f}x, median {median:.2f}x, {verdict}"
        )


if __name__ == "__main__":
    main()
