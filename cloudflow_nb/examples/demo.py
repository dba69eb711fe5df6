"""``make demo``: the image cascade on real models, locally and on an embedded Dask cluster."""

from __future__ import annotations

import time
from concurrent.futures import wait

import numpy as np

import cloudflow_nb as cf
from cloudflow_nb.examples.cascade import cascade_flow
from cloudflow_nb.examples.digits import digits_dataset, weights_path


def _percentiles(ms: list[float]) -> str:
    return f"p50 {np.percentile(ms, 50):6.2f} ms, p99 {np.percentile(ms, 99):6.2f} ms"


def _serve(dep: cf.Deployment, images: np.ndarray) -> tuple[list[float], list[cf.Row]]:
    """Closed-loop requests, one image each: per-request latency and the answers."""
    latencies, rows = [], []
    for image in images:
        start = time.perf_counter()
        rows.append(dep.predict({"image": image})[0])
        latencies.append((time.perf_counter() - start) * 1e3)
    return latencies, rows


def _throughput(dep: cf.Deployment, images: np.ndarray, clients: int = 16) -> float:
    """Requests per second with ``clients`` requests in flight at once."""
    start = time.perf_counter()
    pending = set()
    for image in images:
        pending.add(dep.submit({"image": image}))
        if len(pending) >= clients:
            done, pending = wait(pending, return_when="FIRST_COMPLETED")
            for f in done:
                f.result()
    for f in pending:
        f.result()
    return len(images) / (time.perf_counter() - start)


def main(requests: int = 200) -> None:
    """Run the cascade on held-out digits: locally, then deployed before and after optimization."""
    print("training or loading the digit models ...", flush=True)
    weights_path()
    _, _, test_x, test_y = digits_dataset()
    images, labels = test_x[:requests], test_y[:requests]
    flow = cascade_flow()
    print(f"\n{flow.explain(optimized=False)}\n")
    print(cf.compare(flow))

    local = [flow.run({"image": x})[0]["answer"] for x in images]
    print(f"\nlocal engine: accuracy {np.mean(np.array(local) == labels):.1%} on {requests} held-out digits")

    with cf.LocalCluster(workers=2, gpu_workers=1) as cluster:
        print(f"\n{cluster!r}")
        for title, options in (("unoptimized", False), ("optimized", cf.Optimize())):
            with cluster.deploy(flow, optimize=options) as dep:
                _serve(dep, images[:20])  # warm up
                latencies, rows = _serve(dep, images)
                rate = _throughput(dep, images)
                accuracy = np.mean(np.array([r["answer"] for r in rows]) == labels)
                sent = sum(r["model"] == "cnn" for r in rows)
                print(
                    f"\n{title}: {len(dep.plan.stages)} stages, accuracy {accuracy:.1%}, "
                    f"{sent} of {requests} sent to the CNN"
                )
                print(f"  latency {_percentiles(latencies)}; {rate:.0f} requests/s with 16 in flight")
                stats = dep.stats()
                for name, s in stats["stages"].items():
                    where = ", ".join(sorted({r["worker"].split(":")[-1] + "/" + r["device"] for r in s["replicas"]}))
                    batch = f", mean batch {s['mean_batch']}" if s["batching"] else ""
                    print(
                        f"  stage {name:<32} calls {s['count']:>5}  p50 {s['p50_ms'] or 0:6.2f} ms{batch}"
                        f"  [{'gpu' if s['gpu'] else 'cpu'} on port {where}]"
                    )
        print("\nfirst answers:", [int(r["answer"]) for r in rows[:10]], "true:", labels[:10].tolist())


if __name__ == "__main__":
    main()
