"""Faults under load: how long service stops, and how many requests fail, when a worker holding
replicas and store keys is killed (SIGKILL) and when a replica hangs.

Runs on a 3-worker LocalCluster (worker processes; a nanny restarts a killed worker at a new
address). Four client threads send requests back to back (closed loop) to a flow whose first stage
looks a user's vector up in the store (replicated on two workers) and whose second stage takes
10 ms. The fault comes a third of the way through. Printed per fault: requests sent, failed
(target 0 for the kill; the hung request itself for the hang), the longest time without any
successful answer around the fault (the outage), and p50/p99 before and after it.

Run: ``python benchmarks/faults.py [--quick]`` (about a minute; ``--quick``: about half).
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import numpy as np
from common import markdown_table, parse_args, percentile

import cloudflow_nb as cf

USERS = 50
CLIENTS = 4


def score(row):
    if row["x"] < 0:
        time.sleep(20)  # a hung call
    time.sleep(0.01)
    return float(np.sum(row["vec"]))


def build_flow() -> cf.Flow:
    flow = cf.Flow("faults", user=str, x=int)
    return flow.lookup("user", dynamic=True, into="vec").map(score, names={"score": float})


def drive(dep: cf.Deployment, seconds: float, fault) -> dict[str, float]:
    """Closed-loop load from CLIENTS threads; ``fault()`` runs a third of the way through."""
    done: list[tuple[float, float, bool]] = []  # (sent, answered, ok)
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(seed: int) -> None:
        i = seed
        while time.perf_counter() < stop:
            i += CLIENTS
            sent = time.perf_counter()
            try:
                dep.predict({"user": f"user:{i % USERS}", "x": i}, timeout=15)
                ok = True
            except cf.FlowError:
                ok = False
            with lock:
                done.append((sent, time.perf_counter(), ok))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(seconds / 3)
    at = time.perf_counter()
    fault()
    for t in threads:
        t.join()
    answers = sorted(end for _, end, ok in done if ok)
    gaps = [b - a for a, b in itertools.pairwise(answers) if b > at]
    before = [(e - s) * 1000 for s, e, ok in done if ok and e < at]
    after = [(e - s) * 1000 for s, e, ok in done if ok and s > at + max(gaps or [0])]
    return {
        "sent": len(done),
        "failed": sum(not ok for _, _, ok in done),
        "outage_s": max(gaps or [0.0]),
        "p50_before": percentile(before, 50),
        "p99_before": percentile(before, 99),
        "p50_after": percentile(after, 50) if after else float("nan"),
        "p99_after": percentile(after, 99) if after else float("nan"),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    seconds = 12.0 if args.quick else 24.0
    rows = []
    with cf.LocalCluster(workers=3, gpu_workers=0, dashboard=False) as cluster:
        rng = np.random.default_rng(0)
        cluster.store.update({f"user:{u}": rng.standard_normal(64) for u in range(USERS)})
        flow = build_flow()
        opts = cf.Optimize(locality=False)

        with cluster.deploy(flow, optimize=opts, stage_timeout=1.0) as dep:
            stage = dep.plan.stages[-1].name
            (victim,) = {r["worker"] for r in dep.stats()["stages"][stage]["replicas"]}
            pids = cluster.client.run(os.getpid)
            holds = sum(victim in cluster.store.locations(f"user:{u}") for u in range(USERS))

            def kill() -> None:
                os.kill(pids[victim], signal.SIGKILL)

            result = drive(dep, seconds, kill)
            rows.append([f"worker killed (replica + {holds} store keys)", *_cells(result)])

        with cluster.deploy(flow, optimize=opts, stage_timeout=1.0) as dep:

            def hang() -> None:
                dep.submit({"user": "user:0", "x": -1}, timeout=15)

            result = drive(dep, seconds, hang)
            rows.append(["replica hung (stage_timeout 1 s)", *_cells(result)])

    headers = ["fault", "requests", "failed", "outage s", "p50 before", "p99 before", "p50 after", "p99 after"]
    print(markdown_table(headers, rows))


def _cells(r: dict[str, float]) -> list[object]:
    return [
        int(r["sent"]),
        int(r["failed"]),
        r["outage_s"],
        r["p50_before"],
        r["p99_before"],
        r["p50_after"],
        r["p99_after"],
    ]


if __name__ == "__main__":
    main()
