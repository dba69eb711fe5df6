"""Overload: open-loop load at 1x, 2x, 5x and 10x a stage's measured capacity.

One 50 ms stage with one replica on a 2-worker LocalCluster (worker processes). Its capacity is
measured first (closed loop, enough clients to keep it busy). Then requests arrive at fixed
intervals, whatever happens to earlier ones (open loop), for each load factor and each admission
setting, side by side on the same cluster:

- ``default``: 4 calls per replica, a stage queue of 100;
- ``short queue``: ``max_queue=8``, for latency-bound services;
- ``unbounded``: every request admitted (``max_inflight`` and ``max_queue`` of 10**9), as before
  admission control.

Printed per row: goodput (successful requests per second, over the time from the first arrival to
the last answer) as a ratio of capacity, the admitted requests' p50/p99, how many were refused and
how fast the refusals came back, and how many timed out. Target (DESIGN.md): goodput at least
0.9x capacity at 10x, rejections answered fast.

Run: ``python benchmarks/overload.py [--quick]`` (about 5 minutes; ``--quick``: about 1.5).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from common import closed_loop, markdown_table, parse_args, percentile

import cloudflow_nb as cf

STAGE_SECONDS = 0.05
TIMEOUT = 5.0
SETTINGS = {
    "default": {},
    "short queue": {"max_queue": 8},
    "unbounded": {"max_inflight": 10**9, "max_queue": 10**9},
}


def stage(row):
    time.sleep(STAGE_SECONDS)
    return row["x"]


@dataclass
class Outcomes:
    """What became of each request of one open-loop run."""

    ok: list[float] = field(default_factory=list)  # latencies (ms) of successes
    refused: list[float] = field(default_factory=list)  # latencies (ms) of OverloadErrors
    timed_out: int = 0
    failed: int = 0
    last: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, sent: float, future) -> None:
        now = time.perf_counter()
        ms = (now - sent) * 1000
        exc = future.exception()
        with self.lock:
            self.last = max(self.last, now)
            if exc is None:
                self.ok.append(ms)
            elif isinstance(exc, cf.OverloadError):
                self.refused.append(ms)
            elif isinstance(exc, cf.FlowTimeoutError):
                self.timed_out += 1
            else:
                self.failed += 1


def open_loop(dep: cf.Deployment, rate: float, seconds: float) -> tuple[Outcomes, float]:
    """Send ``rate`` requests per second for ``seconds``; wait for every answer."""
    out = Outcomes()
    futures = []
    count = int(rate * seconds)
    begin = time.perf_counter()
    for i in range(count):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = time.perf_counter()
        future = dep.submit({"x": i}, timeout=TIMEOUT)
        future.add_done_callback(lambda f, sent=sent: out.note(sent, f))
        futures.append(future)
    for future in futures:
        future.exception(timeout=TIMEOUT + 30)
    return out, begin


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    seconds = 5.0 if args.quick else 15.0
    flow = cf.Flow("overload", x=int).map(stage, names={"y": int})
    rows = []
    with cf.LocalCluster(workers=2, gpu_workers=0, dashboard=False) as cluster:
        deps = {name: cluster.deploy(flow, **options) for name, options in SETTINGS.items()}
        capacity = closed_loop(deps["default"].apredict, {"x": 1}, clients=4, seconds=seconds / 2)["throughput"]
        print(f"capacity of one replica of a {STAGE_SECONDS * 1000:.0f} ms stage: {capacity:.1f} requests/s")
        for factor in (1, 2, 5, 10):
            for name, dep in deps.items():
                out, begin = open_loop(dep, capacity * factor, seconds)
                goodput = len(out.ok) / (out.last - begin)
                rows.append(
                    [
                        f"{factor}x",
                        name,
                        f"{goodput / capacity:.2f}",
                        percentile(out.ok, 50) if out.ok else "-",
                        percentile(out.ok, 99) if out.ok else "-",
                        len(out.refused),
                        percentile(out.refused, 50) if out.refused else "-",
                        percentile(out.refused, 99) if out.refused else "-",
                        out.timed_out + out.failed,
                    ]
                )
                print(f"  {factor}x {name}: goodput {goodput / capacity:.2f}x capacity", flush=True)
        for dep in deps.values():
            dep.close()
    print()
    print(
        markdown_table(
            [
                "load",
                "admission",
                "goodput / capacity",
                "admitted p50 ms",
                "admitted p99 ms",
                "refused",
                "refusal p50 ms",
                "refusal p99 ms",
                "timed out or failed",
            ],
            rows,
        )
    )
    worst = min(float(r[2]) for r in rows if r[0] == "10x" and r[1] != "unbounded")
    print()
    print(
        f"goodput at 10x overload, bounded admission: {worst:.2f}x capacity (target >= 0.9x): "
        f"{'met' if worst >= 0.9 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
