"""Autoscaling: the paper's load spike on a 100 ms stage, with and without the autoscaler.

The paper's scaling experiment: a flow ``+1`` then ``sleep 100 ms``, so one replica of the second
stage answers at most 10 requests/s; a baseline load, then a spike, reported per epoch. Here two
deployments of that flow run on one 2-worker LocalCluster and get the same open-loop arrivals
side by side (each arrival goes to both): ``autoscaled`` (``dep.autoscale``) and ``fixed`` (one
replica, as deployed). The baseline is half a replica's capacity; the spike offers ``SPIKE`` times
a replica's capacity.

Printed per epoch and deployment: offered load (arrivals/s), throughput (answers/s), the p50/p99 of
the requests that arrived in the epoch and were answered, how many were refused (``OverloadError``,
answered at once) and the replicas of the 100 ms stage at the end of the epoch. Then the recovery
time: seconds from the spike until the p99 of every later one-second window is under ``TARGET_MS``
(three times the stage's own 100 ms), and the throughput ratio autoscaled/fixed during the spike.

Run: ``python benchmarks/autoscaling.py [--quick]`` (about 2 minutes; ``--quick``: about 45 s).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from common import markdown_table, parse_args, percentile

import cloudflow_nb as cf

STAGE_SECONDS = 0.1
CAPACITY = 1 / STAGE_SECONDS  # requests/s of one replica: it runs one call at a time
BASELINE = 0.5  # x one replica's capacity
SPIKE = 3.0
TARGET_MS = 300.0
TIMEOUT = 5.0


def increment(row):
    return row["x"] + 1


def slow(row):
    time.sleep(STAGE_SECONDS)
    return row["x"] + 1


@dataclass
class Request:
    sent: float
    done: float = 0.0
    outcome: str = ""  # "ok", "refused", "timeout" or "failed"


def finish(request: Request, future) -> None:
    request.done = time.perf_counter()
    exc = future.exception()
    if exc is None:
        request.outcome = "ok"
    elif isinstance(exc, cf.OverloadError):
        request.outcome = "refused"
    elif isinstance(exc, cf.FlowTimeoutError):
        request.outcome = "timeout"
    else:
        request.outcome = "failed"


def send(deps: dict[str, cf.Deployment], phases: list[tuple[float, float]]) -> dict[str, list[Request]]:
    """Open loop: ``(rate, seconds)`` phases, each arrival sent to every deployment in turn."""
    sent: dict[str, list[Request]] = {name: [] for name in deps}
    futures = []
    at = time.perf_counter()
    for rate, seconds in phases:
        end = at + seconds
        while at < end:
            delay = at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            for name, dep in deps.items():
                request = Request(time.perf_counter())
                future = dep.submit({"x": len(sent[name])}, timeout=TIMEOUT)
                future.add_done_callback(lambda f, r=request: finish(r, f))
                sent[name].append(request)
                futures.append(future)
            at += 1 / rate
    for future in futures:
        future.exception(timeout=TIMEOUT + 30)
    return sent


def sample_replicas(deps: dict[str, cf.Deployment], stop: threading.Event, every: float) -> dict[str, list]:
    """``(time, replicas of the slowest stage)`` every ``every`` seconds until ``stop`` is set."""
    samples: dict[str, list] = {name: [] for name in deps}

    def run() -> None:
        while not stop.wait(every):
            for name, dep in deps.items():
                stages = dep.stats()["stages"].values()
                slowest = max(stages, key=lambda s: s["p50_ms"] or 0)
                samples[name].append((time.perf_counter(), len(slowest["replicas"])))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    samples["_thread"] = [thread]
    return samples


def window_rows(requests: list[Request], start: float, width: float, count: int, replicas: list) -> list[list]:
    rows = []
    for i in range(count):
        lo, hi = start + i * width, start + (i + 1) * width
        arrived = [r for r in requests if lo <= r.sent < hi]
        ok = [(r.done - r.sent) * 1000 for r in arrived if r.outcome == "ok"]
        answered = sum(1 for r in requests if r.outcome == "ok" and lo <= r.done < hi)
        current = [n for t, n in replicas if t < hi]
        rows.append(
            [
                f"{i * width:.0f}-{(i + 1) * width:.0f}",
                f"{len(arrived) / width:.1f}",
                f"{answered / width:.1f}",
                percentile(ok, 50) if ok else "-",
                percentile(ok, 99) if ok else "-",
                sum(1 for r in arrived if r.outcome == "refused"),
                sum(1 for r in arrived if r.outcome in ("timeout", "failed")),
                current[-1] if current else 1,
            ]
        )
    return rows


def recovery_seconds(requests: list[Request], spike: float, end: float) -> float | None:
    """Seconds from ``spike`` until every later one-second window's p99 is under ``TARGET_MS``."""
    windows = []
    t = spike
    while t + 1 <= end:
        ok = [(r.done - r.sent) * 1000 for r in requests if t <= r.sent < t + 1 and r.outcome == "ok"]
        refused = any(r.outcome != "ok" for r in requests if t <= r.sent < t + 1)
        windows.append((t, bool(ok) and not refused and percentile(ok, 99) <= TARGET_MS))
        t += 1
    for i, (t, good) in enumerate(windows):
        if good and all(g for _, g in windows[i:]):
            return t - spike
    return None


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    baseline_s, spike_s, epoch = (10.0, 30.0, 5.0) if args.quick else (40.0, 60.0, 5.0)
    flow = cf.Flow("spike", x=int).map(increment, names={"x": int}).map(slow, names={"y": int})
    with cf.LocalCluster(workers=2, gpu_workers=0, dashboard=False) as cluster:
        deps = {"autoscaled": cluster.deploy(flow), "fixed": cluster.deploy(flow)}
        # a replica runs one call at a time, so one call in flight means busy; the autoscaler may
        # add two workers when the two it has are full (the paper adds nodes the same way)
        deps["autoscaled"].autoscale(max_replicas=6, target_inflight=1, interval=0.5, max_workers=2)
        for dep in deps.values():
            dep.predict({"x": 0})  # warm
        stop = threading.Event()
        samples = sample_replicas(deps, stop, every=0.5)
        begin = time.perf_counter()
        sent = send(deps, [(BASELINE * CAPACITY, baseline_s), (SPIKE * CAPACITY, spike_s)])
        stop.set()
        samples.pop("_thread")[0].join(timeout=10)
        autoscale = deps["autoscaled"].stats()["autoscale"]
        for dep in deps.values():
            dep.close()

    spike = begin + baseline_s
    epochs = int((baseline_s + spike_s) // epoch)
    header = ["epoch s", "offered/s", "answered/s", "p50 ms", "p99 ms", "refused", "timed out", "replicas"]
    print(
        f"stage {STAGE_SECONDS * 1000:.0f} ms (one replica: {CAPACITY:.0f} requests/s); "
        f"baseline {BASELINE * CAPACITY:.0f}/s for {baseline_s:.0f} s, then spike {SPIKE * CAPACITY:.0f}/s "
        f"for {spike_s:.0f} s; the same arrivals go to both deployments"
    )
    for name, requests in sent.items():
        print(f"\n{name}\n")
        print(markdown_table(header, window_rows(requests, begin, epoch, epochs, samples[name])))
    print()
    ratio = {}
    for name, requests in sent.items():
        during = [r for r in requests if r.sent >= spike and r.outcome == "ok"]
        ratio[name] = len(during) / spike_s
        recovered = recovery_seconds(requests, spike, spike + spike_s)
        when = f"{recovered:.0f} s after the spike" if recovered is not None else "never during the spike"
        late = sum(1 for r in requests if r.outcome in ("timeout", "failed"))
        refused = sum(1 for r in requests if r.outcome == "refused")
        print(
            f"{name}: p99 back under {TARGET_MS:.0f} ms {when}; of {len(requests)} requests "
            f"{refused} refused at once, {late} timed out or failed"
        )
    print(
        f"throughput during the spike, autoscaled / fixed: {ratio['autoscaled'] / ratio['fixed']:.2f}x "
        f"({ratio['autoscaled']:.1f} vs {ratio['fixed']:.1f} answers/s)"
    )
    print(
        f"autoscaler: {autoscale['replicas_added']} replicas and {autoscale['workers_added']} workers added; "
        "last decisions:"
    )
    for decision in autoscale["decisions"][-4:]:
        print(f"  {decision}")


if __name__ == "__main__":
    main()
