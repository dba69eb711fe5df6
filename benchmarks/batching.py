"""Batching: a plain-torch CNN under 1 to 32 concurrent clients, batched vs unbatched.

The paper's batching benchmark (section 3.1) serves one image model with ``batching=True``. Here
the model is a small VGG-style CNN (two conv blocks and a 2048-wide fully connected head, random
weights) on 3x32x32 inputs, served by one replica on CPU. Clients are closed-loop: each sends its
next request when the last one returns. As in the paper's executor, a batch takes whatever is
queued (up to 32) without waiting for more (``max_batch_wait_ms=0``); a 2 ms wait measured worse
at 1 to 8 clients on this machine. Target: batching gives at least 2x the throughput.

Run: ``python benchmarks/batching.py [--quick]``.
"""

from __future__ import annotations

import numpy as np
from common import closed_loop, markdown_table, parse_args

import cloudflow_nb as cf

HIDDEN = 2048


class CNN:
    """Built once per replica (the model loads here); called with a list of rows."""

    def __init__(self) -> None:
        import torch
        from torch import nn

        torch.manual_seed(0)
        self.torch = torch
        self.model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 8 * 8, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, 10),
        ).eval()

    def __call__(self, rows):
        batch = self.torch.from_numpy(np.stack([row["img"] for row in rows]))
        with self.torch.inference_mode():
            return self.model(batch).argmax(dim=1).tolist()


def flow() -> cf.Flow:
    return cf.Flow("batching", img=np.ndarray).map(CNN, names={"label": int}, batching=True)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    clients = [1, 8, 32] if args.quick else [1, 2, 4, 8, 16, 32]
    seconds = 2.0 if args.quick else 6.0
    request = {"img": np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)}
    options = {
        False: cf.Optimize(batching=False),
        True: cf.Optimize(batching=True, max_batch_size=32, max_batch_wait_ms=0.0),
    }
    results = {}
    with cf.LocalCluster(workers=2, gpu_workers=0, dashboard=False) as cluster:
        for batched, opts in options.items():
            with cluster.deploy(flow(), optimize=opts) as dep:
                closed_loop(dep.apredict, request, 4, 1.0)  # warm up
                for n in clients:
                    results[batched, n] = closed_loop(dep.apredict, request, n, seconds)
                stage = dep.stats()["stages"]["CNN"]
                print(f"batched={batched}: mean batch size {stage['mean_batch']}, {stage['adaptive_batching']}")
    rows = []
    for n in clients:
        off, on = results[False, n], results[True, n]
        rows.append(
            [
                n,
                off["throughput"],
                on["throughput"],
                f"{on['throughput'] / off['throughput']:.1f}x",
                off["median"],
                on["median"],
                off["p99"],
                on["p99"],
            ]
        )
    headers = [
        "clients",
        "unbatched req/s",
        "batched req/s",
        "throughput gain",
        "unbatched p50 ms",
        "batched p50 ms",
        "unbatched p99 ms",
        "batched p99 ms",
    ]
    print(f"\n## Batching: CNN (fc {HIDDEN}) on one CPU replica, closed-loop clients, {seconds:g} s each\n")
    print(markdown_table(headers, rows))
    top = max(clients)
    gain = results[True, top]["throughput"] / results[False, top]["throughput"]
    print(
        f"\nTarget ({top} clients, batching at least 2x throughput): {gain:.1f}x, {'met' if gain >= 2 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
