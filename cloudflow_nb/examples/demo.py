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


def _serve_side_by_side(deps: dict[str, cf.Deployment], images: np.ndarray) -> dict[str, tuple[list, list]]:
    """Closed-loop requests, one image each, alternating between deployments: latencies and rows."""
    out: dict[str, tuple[list, list]] = {name: ([], []) for name in deps}
    for image in images:
        for name, dep in deps.items():
            start = time.perf_counter()
            row = dep.predict({"image": image})[0]
            out[name][0].append((time.perf_counter() - start) * 1e3)
            out[name][1].append(row)
    return out


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

    variants = {"unoptimized": False, "optimized": cf.Optimize(), "whole-flow fused": cf.Optimize(whole=True)}
    with cf.LocalCluster(workers=2, gpu_workers=1) as cluster:
        print(f"\n{cluster!r}: requests alternate between the deployments, so they share the same load")
        deps = {title: cluster.deploy(flow, optimize=options) for title, options in variants.items()}
        _serve_side_by_side(deps, images[:20])  # warm up
        served = _serve_side_by_side(deps, images)
        base = np.percentile(served["unoptimized"][0], 50)
        for title, dep in deps.items():
            latencies, rows = served[title]
            rate = _throughput(dep, images)
            accuracy = np.mean(np.array([r["answer"] for r in rows]) == labels)
            sent = sum(r["model"] == "cnn" for r in rows)
            print(
                f"\n{title}: {len(dep.plan.stages)} stages, accuracy {accuracy:.1%}, "
                f"{sent} of {requests} sent to the CNN"
            )
            print(
                f"  latency {_percentiles(latencies)} ({np.percentile(latencies, 50) / base:.2f}x unoptimized); "
                f"{rate:.0f} requests/s with 16 in flight"
            )
            for name, s in dep.stats()["stages"].items():
                where = ", ".join(sorted({r["worker"].split(":")[-1] + "/" + r["device"] for r in s["replicas"]}))
                batch = f", mean batch {s['mean_batch']}" if s["batching"] else ""
                print(
                    f"  stage {name:<32} calls {s['count']:>5}  p50 {s['p50_ms'] or 0:6.2f} ms{batch}"
                    f"  [{'gpu' if s['gpu'] else 'cpu'} on port {where}]"
                )
            dep.close()
        print("\nfirst answers:", [int(r["answer"]) for r in rows[:10]], "true:", labels[:10].tolist())


if __name__ == "__main__":
    main()
