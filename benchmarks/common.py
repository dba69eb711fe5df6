"""Shared helpers for the benchmarks: arguments, timing loops, percentiles and markdown tables."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "closed_loop",
    "closed_loop_latencies",
    "machine",
    "markdown_table",
    "open_loop_latencies",
    "parse_args",
    "percentile",
    "sequential",
    "summary",
]


def parse_args(description: str) -> argparse.Namespace:
    """``--quick``: fewer sizes and requests, for a smoke run in about a minute."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer configurations and requests")
    return parser.parse_args()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (linear interpolation)."""
    return float(np.percentile(np.asarray(values, dtype=float), q))


def summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """Median, p99 and mean of latencies in milliseconds."""
    return {
        "median": percentile(latencies_ms, 50),
        "p99": percentile(latencies_ms, 99),
        "mean": float(np.mean(latencies_ms)),
    }


def sequential(call: Callable[[int], Any], count: int, warmup: int = 3, pause: float = 0.0) -> list[float]:
    """Latencies (ms) of ``count`` calls ``call(i)`` made one after another, after ``warmup`` calls."""
    for i in range(warmup):
        call(i)
    out = []
    for i in range(count):
        start = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - start) * 1000)
        if pause:
            time.sleep(pause)
    return out


def closed_loop(predict: Callable[[Any], Any], request: Any, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` concurrent clients, each sending its next request when the last one returns.

    ``predict`` is an async function (``dep.apredict``). Returns throughput (requests/s) and the
    median and p99 latency (ms) of the requests that finished within ``seconds``.
    """
    latencies, elapsed = closed_loop_latencies(predict, lambda _: request, clients, seconds)
    return {"throughput": len(latencies) / elapsed, **summary(latencies)}


def closed_loop_latencies(
    predict: Callable[[Any], Any], request_of: Callable[[int], Any], clients: int, seconds: float
) -> tuple[list[float], float]:
    """The closed loop of :func:`closed_loop`, sending ``request_of(i)`` as the ``i``-th request.

    Returns every request's latency (ms) and the seconds the loop took (the last requests
    included), for callers that merge several runs.
    """
    sent = itertools.count()

    async def client(stop: float, latencies: list[float]) -> None:
        while time.perf_counter() < stop:
            request = request_of(next(sent))
            start = time.perf_counter()
            await predict(request)
            latencies.append((time.perf_counter() - start) * 1000)

    async def main() -> tuple[list[float], float]:
        latencies: list[float] = []
        begin = time.perf_counter()
        await asyncio.gather(*(client(begin + seconds, latencies) for _ in range(clients)))
        return latencies, time.perf_counter() - begin

    return asyncio.run(main())


def open_loop_latencies(
    predict: Callable[[Any], Any], request_of: Callable[[int], Any], rate: float, seconds: float, seed: int = 0
) -> tuple[list[float], float]:
    """Requests sent at Poisson arrivals of ``rate`` per second for ``seconds``, whether or not
    earlier ones have returned (an open loop: the load does not ease when the server slows).

    Returns every request's latency (ms) and the seconds from the first send to the last answer.
    """
    arrivals = random.Random(seed)

    async def one(i: int, latencies: list[float]) -> None:
        start = time.perf_counter()
        await predict(request_of(i))
        latencies.append((time.perf_counter() - start) * 1000)

    async def main() -> tuple[list[float], float]:
        latencies: list[float] = []
        sent: list[asyncio.Task[None]] = []
        begin = time.perf_counter()
        due = begin
        while due < begin + seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            sent.append(asyncio.ensure_future(one(len(sent), latencies)))
            due += arrivals.expovariate(rate)
        await asyncio.gather(*sent)
        return latencies, time.perf_counter() - begin

    return asyncio.run(main())


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats get two decimals."""

    def cell(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line describing where the benchmark ran."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        memory = ""
    return f"{cpu}, {os.cpu_count()} cores{memory}, Python {platform.python_version()}, {platform.system()}"
