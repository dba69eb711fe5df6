"""Real pipelines: the local engine, deployed unoptimized and deployed optimized, side by side.

For each of the paper's four pipelines in ``cloudflow_nb.examples`` (``image_cascade``,
``video``, ``translation``, ``recommender``; the recommender also on MovieLens-100K), in one run
on one cluster: the reference engine in this process, the flow deployed without rewrites
(``optimize=False``: one stage per operator) and deployed optimized (``cf.Optimize()``), each
under 1 and 8 closed-loop clients sending the module's real requests in turn, then the deployments
under an open loop: requests at Poisson arrivals of :data:`LOAD` times what unoptimized served at
8 clients, the same arrival times for each. The open loop compares them at the same offered load:
under closed-loop clients a deployment that serves more requests per second also keeps more of
them running at once, so a faster plan can raise the median of its cheap requests (they share the
cores with more work) while its throughput, mean and tail improve. The variants take turns in
short rounds (their order rotating), so drift on the machine hits all of them. Printed: median and
p99 latency, throughput, and each one's ratio to the unoptimized deployment.

Each ratio comes with its 90% bootstrap interval (the latencies of both variants resampled
:data:`DRAWS` times; throughput's from the mean latency, as closed-loop clients make it, and none
under the open loop, whose rate is set): the
uncertainty of a figure made of few requests (a p99 of a hundred requests is hardly more than
their slowest). A second unoptimized deployment, identical to the first, is measured beside them
(an A/A control): its ratios show the run-to-run noise that resampling cannot see (drift,
placement, the rounds' order). Optimized counts as slower on a figure when it is worse than
:data:`SLOWER` and than the A/A control's deviation from 1 (either way), and its whole interval is
worse than 1.

A pipeline module provides ``flow(**options) -> cf.Flow`` and ``requests(n, seed=0, **options)``.
One that needs its key-value store also defines ``store_data(small=..., **options) -> dict``:
the benchmark then passes ``small`` (``--quick``: small, else full size) with the options to all
three, loads the contents into ``cluster.store`` (and passes them to local runs), and clears
the store after. A module's ``SUBSTITUTIONS`` string, when it has one, is printed with its table:
what stands in for the paper's models and data (real weights, random weights, which data). A
module that cannot be imported or set up (a missing package, a system package such as Apertium)
is skipped with a note.

The cluster: 2 CPU workers and 1 GPU-tagged worker (processes). The store keeps one copy of each
value (``cluster.store.replicas = 1``), so, as on a cluster with more workers than copies, a
lookup is local only on the worker that holds its key: what the optimizer's locality routing is
for.

Run: ``python benchmarks/pipelines.py [--quick] [--pipelines recommender,video] [--seconds S]``;
``--pipelines`` also takes a dotted module path (your own pipeline, same contract).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from common import closed_loop_latencies, markdown_table, open_loop_latencies, summary

import cloudflow_nb as cf


@dataclass(frozen=True)
class Entry:
    """A pipeline module, the options its functions take, and the request timeout it needs."""

    path: str
    options: dict[str, Any] = field(default_factory=dict)  # for flow, requests and store_data
    clip: tuple[int, int] | None = None  # video: frames per request (full run, --quick)
    timeout: float = 30.0
    seconds: float | None = None  # per figure, for pipelines whose requests take seconds (full run)


PIPELINES: dict[str, Entry] = {
    # about 4 requests/s at 1 client: figures last longer, so a p99 is not just the slowest of 70
    "image_cascade": Entry("cloudflow_nb.examples.image_cascade", seconds=18.0),
    # HOG costs about 0.2 s per 768x576 frame on one core: the paper's 30-frame clips would give a
    # figure a handful of requests on two cores, so requests carry 4 frames and figures last longer
    "video": Entry("cloudflow_nb.examples.video", clip=(4, 2), timeout=300.0, seconds=48.0),
    "translation": Entry("cloudflow_nb.examples.translation"),
    "recommender": Entry("cloudflow_nb.examples.recommender"),
    "recommender-movielens": Entry("cloudflow_nb.examples.recommender", {"data": "movielens"}),
}
CLIENTS = (1, 8)
LOAD = 0.6  # the open-loop figure's rate: this share of unoptimized's throughput at 8 clients
SLOWER = 1.05  # a ratio past this and the A/A control's (latency up, throughput down)...
AGAIN = "unoptimized again"  # ...with an interval wholly worse than 1, is "slower"
DRAWS = 1000  # bootstrap resamples per interval
STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "median": lambda a: np.median(a, axis=1),
    "p99": lambda a: np.percentile(a, 99, axis=1),
    "mean": lambda a: np.mean(a, axis=1),
}


@dataclass
class Runs:
    """One variant at one concurrency: every latency (ms), seconds spent, and failed requests."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0

    def figures(self) -> dict[str, float]:
        return {"throughput": len(self.latencies) / self.seconds, **summary(self.latencies)}


@dataclass
class Pipeline:
    """A pipeline module set up for one run: its flow, requests and store contents."""

    name: str
    flow: cf.Flow
    requests: list[Any]
    store: dict[str, Any] | None
    substitutions: str
    timeout: float = 30.0
    seconds: float | None = None

    def request(self, i: int) -> Any:
        """The ``i``-th request sent: the real requests in turn."""
        return self.requests[i % len(self.requests)]


def set_up(name: str, small: bool, count: int) -> Pipeline | str:
    """The pipeline ``name`` ready to serve, or why it is skipped."""
    entry = PIPELINES.get(name, Entry(name))
    try:
        module = importlib.import_module(entry.path)
    except ImportError as exc:
        return f"cannot import {entry.path} ({exc})"
    store = None
    options = entry.options
    try:
        if hasattr(module, "store_data"):
            options = {**options, "small": small}
            store = module.store_data(**options)
        clip = {} if entry.clip is None else {"frames": entry.clip[small]}
        requests = module.requests(count, seed=0, **options, **clip)
        substitutions = getattr(module, "SUBSTITUTIONS", "not stated by the module")
        if clip:
            substitutions += f" Requests carry {clip['frames']} frames each (the paper: 30)."
        seconds = None if small else entry.seconds
        return Pipeline(name, module.flow(**options), requests, store, substitutions, entry.timeout, seconds)
    except cf.FlowError as exc:
        return f"set-up failed: {exc}"


def predictors(pipeline: Pipeline, deps: dict[str, cf.Deployment]) -> dict[str, Callable[[Any], Any]]:
    """An async ``predict`` per variant; the local engine runs in a thread per call."""

    async def local(request: Any) -> Any:
        return await asyncio.to_thread(pipeline.flow.run, request, pipeline.store)

    return {"local": local, **{variant: dep.apredict for variant, dep in deps.items()}}


Drive = Callable[[Callable[[Any], Any], float], tuple[list[float], float]]


def measure(predict: dict[str, Callable[[Any], Any]], drive: Drive, seconds: float, rounds: int) -> dict[str, Runs]:
    """Each variant under the load ``drive`` makes (``drive(call, seconds)`` -> latencies, time
    taken), ``seconds`` in all, in ``rounds`` turns."""
    runs = {variant: Runs() for variant in predict}
    order = list(predict)
    for turn in range(rounds):
        for variant in order[turn % len(order) :] + order[: turn % len(order)]:
            run = runs[variant]

            async def counted(request: Any, call: Callable[[Any], Any] = predict[variant], run: Runs = run) -> None:
                try:
                    await call(request)
                except cf.FlowError:
                    run.errors += 1

            latencies, elapsed = drive(counted, seconds / rounds)
            run.latencies += latencies
            run.seconds += elapsed
    return runs


def closed(pipeline: Pipeline, clients: int) -> Drive:
    """``clients`` closed-loop clients sending the pipeline's requests."""
    return lambda call, seconds: closed_loop_latencies(call, pipeline.request, clients, seconds)


def poisson(pipeline: Pipeline, rate: float) -> Drive:
    """The pipeline's requests at Poisson arrivals of ``rate`` per second (the same arrival times
    for every variant)."""
    return lambda call, seconds: open_loop_latencies(call, pipeline.request, rate, seconds)


WARM_UP = 3.0  # seconds per variant: models load, connections open, adaptive batching and racing learn


def warm_up(pipeline: Pipeline, predict: dict[str, Callable[[Any], Any]], seconds: float) -> None:
    """Every variant under the most clients for ``seconds``, untimed: the steady state is measured."""
    for call in predict.values():
        closed_loop_latencies(call, pipeline.request, max(CLIENTS), seconds)


def intervals(latencies: list[float], base: list[float], rng: np.random.Generator) -> dict[str, tuple[float, float]]:
    """90% bootstrap intervals of the ratios of ``latencies``' median, p99 and mean to ``base``'s."""
    a, b = np.asarray(latencies), np.asarray(base)
    drawn_a = a[rng.integers(0, len(a), (DRAWS, len(a)))]
    drawn_b = b[rng.integers(0, len(b), (DRAWS, len(b)))]
    out = {}
    for name, statistic in STATISTICS.items():
        ratios = statistic(drawn_a) / statistic(drawn_b)
        out[name] = (float(np.percentile(ratios, 5)), float(np.percentile(ratios, 95)))
    return out


def report(pipeline: Pipeline, stages: dict[str, int], results: dict[str, dict[str, Runs]]) -> list[str]:
    """Print the pipeline's table; the (load, figure) pairs where optimized was slower: worse than
    :data:`SLOWER` and the A/A control, with its whole 90% interval worse than 1. Under an open
    loop the offered rate sets the throughput, so only latency is judged there."""
    rows, slower = [], []
    rng = np.random.default_rng(0)
    for load, runs in results.items():
        offered = load.endswith("(Poisson)")
        base_run = runs["unoptimized"]
        base = base_run.figures()
        again = runs[AGAIN].figures()
        aa = [again["median"] / base["median"], again["p99"] / base["p99"], again["throughput"] / base["throughput"]]
        noise = [max(SLOWER, aa[0], 1 / aa[0]), max(SLOWER, aa[1], 1 / aa[1]), min(1 / SLOWER, aa[2], 1 / aa[2])]
        for variant, run in runs.items():
            f = run.figures()
            ratios = [f["median"] / base["median"], f["p99"] / base["p99"], f["throughput"] / base["throughput"]]
            if variant == "unoptimized":
                cells = [f"{r:.2f}x" for r in ratios]
            else:
                found = intervals(run.latencies, base_run.latencies, rng)
                spans = [found["median"], found["p99"], (1 / found["mean"][1], 1 / found["mean"][0])]
                cells = [f"{r:.2f}x ({lo:.2f}-{hi:.2f})" for r, (lo, hi) in zip(ratios, spans, strict=True)]
                if offered:
                    cells[2] = f"{ratios[2]:.2f}x"
                if variant == "optimized":
                    worse = {
                        "median": ratios[0] > noise[0] and spans[0][0] > 1,
                        "p99": ratios[1] > noise[1] and spans[1][0] > 1,
                        "req/s": not offered and ratios[2] < noise[2] and spans[2][1] < 1,
                    }
                    slower += [f"{load} {what}" for what, bad in worse.items() if bad]
            rows.append([load, variant, f["median"], f["p99"], f["throughput"], *cells, run.errors])
    headers = ["load", "variant", "median ms", "p99 ms", "req/s", "median ratio", "p99 ratio", "req/s ratio"]
    headers.append("errors")
    plan = ", ".join(f"{variant} {n} stages" for variant, n in stages.items())
    print(f"\n### {pipeline.name} ({plan}; ratios are to the unoptimized deployment, 90% intervals)\n")
    print(f"Models and data: {pipeline.substitutions}\n")
    print(markdown_table(headers, rows), flush=True)
    return slower


def serve(cluster: cf.Cluster, pipeline: Pipeline, seconds: float, rounds: int) -> list[str]:
    """Measure ``pipeline`` on the local engine and deployed both ways; print its table."""
    if pipeline.store:
        cluster.store.update(pipeline.store)
    try:
        with (
            cluster.deploy(pipeline.flow, optimize=False, timeout=pipeline.timeout) as plain,
            cluster.deploy(pipeline.flow, optimize=False, timeout=pipeline.timeout) as again,
            cluster.deploy(pipeline.flow, optimize=cf.Optimize(), timeout=pipeline.timeout) as optimized,
        ):
            predict = predictors(pipeline, {"unoptimized": plain, AGAIN: again, "optimized": optimized})
            warm_up(pipeline, predict, WARM_UP if rounds > 1 else 0.2)
            results = {
                f"{n} client{'s' if n > 1 else ''}": measure(predict, closed(pipeline, n), seconds, rounds)
                for n in CLIENTS
            }
            rate = LOAD * results[f"{max(CLIENTS)} clients"]["unoptimized"].figures()["throughput"]
            deployed = {variant: call for variant, call in predict.items() if variant != "local"}
            results[f"{rate:.3g} req/s (Poisson)"] = measure(deployed, poisson(pipeline, rate), seconds, rounds)
            stages = {"unoptimized": len(plain.plan.stages), "optimized": len(optimized.plan.stages)}
            decisions = {
                (kind, n): s.get(key)
                for n, s in optimized.stats()["stages"].items()
                for kind, key in (("Batch size", "adaptive_batching"), ("Racing", "racing"))
            }
    finally:
        cluster.store.clear()
    slower = report(pipeline, stages, results)
    for (kind, stage), decision in decisions.items():
        if decision is not None:
            print(f"{kind} of optimized stage {stage!r}: {decision}")
    return slower


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small stores, fewer requests, shorter runs")
    parser.add_argument("--pipelines", default=",".join(PIPELINES), help="comma-separated names or module paths")
    parser.add_argument("--seconds", type=float, help="seconds per variant and concurrency (default 3, quick 1)")
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    rounds = 1 if args.quick else 3
    count = 8 if args.quick else 32
    print(f"## Real pipelines: local engine, deployed unoptimized and optimized; {seconds:g} s per figure")
    verdicts: dict[str, list[str]] = {}
    failed = []
    with cf.LocalCluster(workers=2, gpu_workers=1, dashboard=False) as cluster:
        cluster.store.replicas = 1
        for name in args.pipelines.split(","):
            pipeline = set_up(name, args.quick, count)
            if isinstance(pipeline, str):
                print(f"\n{name}: skipped: {pipeline}", flush=True)
                continue
            started = time.perf_counter()
            try:
                verdicts[name] = serve(cluster, pipeline, max(seconds, pipeline.seconds or 0), rounds)
            except Exception as exc:  # one broken pipeline must not hide the others' figures
                print(f"\n{name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
                failed.append(name)
                continue
            print(f"({time.perf_counter() - started:.0f} s)", flush=True)
    print()
    for name, slower in verdicts.items():
        verdict = "optimized never slower" if not slower else "optimized SLOWER at " + ", ".join(slower)
        print(
            f"Target ({name}: optimized never slower than unoptimized: no figure worse than {SLOWER - 1:.0%} "
            f"and the A/A control with its 90% interval wholly worse than 1): {verdict}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
