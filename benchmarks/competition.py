"""Competitive execution: a high-variance stage raced by 1 to 3 replicas on distinct workers.

The paper's benchmark (section 3.1): ``map(+1)`` -> a map sleeping 10 ms x Gamma(shape 3, scale s)
for s = 1, 2, 4 (means 30, 60, 120 ms), marked ``high_variance`` -> ``map(identity)``, fusion off
(as in the paper: otherwise one replica runs a single fused stage while racing keeps three stages,
and the comparison measures two extra hops rather than racing). Sequential requests; as in the
paper, the next request waits until the losing replicas have finished (here: until they answer,
at most the paper's 300 ms), so that every race starts on idle replicas. The ``3, back to back``
rows send the next request at once instead: losers still running then sit out the next race.
Target: 3 racing replicas give at most 0.5x the single replica's p99, with a median no worse.

Run: ``python benchmarks/competition.py [--quick]``.
"""

from __future__ import annotations

import random
import time

from common import markdown_table, parse_args, summary

import cloudflow_nb as cf

SCALES = [1.0, 2.0, 4.0]
SETTLE_MAX = 0.300  # the paper's pause between requests
GAP = 0.010  # idle time before every request, with or without losers to wait for


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


def answered(dep: cf.Deployment) -> int:
    """Calls the sleeping stage's replicas have answered so far (race losers included)."""
    return sum(r["calls"] for r in dep.stats()["stages"]["gamma_sleep"]["replicas"])


def measure(dep: cf.Deployment, racers: int, count: int, settle: bool) -> list[float]:
    """Latencies (ms) of ``count`` sequential requests after 3 warm-up ones; with ``settle``, each
    next request waits until the last one's losers answered (at most ``SETTLE_MAX``)."""
    out = []
    for i in range(-3, count):
        before = answered(dep) if settle else 0
        start = time.perf_counter()
        dep.predict({"val": i})
        if i >= 0:
            out.append((time.perf_counter() - start) * 1000)
        stop = time.perf_counter() + SETTLE_MAX
        while settle and answered(dep) < before + racers and time.perf_counter() < stop:
            time.sleep(0.002)
        time.sleep(GAP)
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count = 60 if args.quick else 250
    scales = SCALES[:1] if args.quick else SCALES
    configs = [(1, True), (2, True), (3, True), (3, False)]
    results: dict[tuple[float, int, bool], dict[str, float]] = {}
    with cf.LocalCluster(workers=3, gpu_workers=0, dashboard=False) as cluster:
        for scale in scales:
            for replicas, settle in configs:
                options = cf.Optimize(compete=replicas, fusion=False)
                with cluster.deploy(flow(scale), optimize=options) as dep:
                    results[scale, replicas, settle] = summary(measure(dep, replicas, count, settle))
    rows = []
    for scale in scales:
        base = results[scale, 1, True]
        for replicas, settle in configs:
            r = results[scale, replicas, settle]
            rows.append(
                [
                    f"{30 * scale:.0f} ms",
                    replicas if settle else f"{replicas}, back to back",
                    r["median"],
                    r["p99"],
                    r["median"] / base["median"],
                    r["p99"] / base["p99"],
                ]
            )
    headers = ["mean sleep", "racing replicas", "median ms", "p99 ms", "median / 1 replica", "p99 / 1 replica"]
    print(f"## Competitive execution: Gamma(3, s) x 10 ms stage, {count} sequential requests, fusion off\n")
    print(markdown_table(headers, rows))
    print()
    for scale in scales:
        p99 = results[scale, 3, True]["p99"] / results[scale, 1, True]["p99"]
        median = results[scale, 3, True]["median"] / results[scale, 1, True]["median"]
        verdict = "met" if p99 <= 0.5 and median <= 1.0 else "NOT met"
        print(
            f"Target (s={scale:g}, 3 replicas: p99 <= 0.5x, median <= 1x): "
            f"p99 {p99:.2f}x, median {median:.2f}x, {verdict}"
        )


if __name__ == "__main__":
    main()
