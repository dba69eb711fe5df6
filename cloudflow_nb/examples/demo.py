"""``make demo``: the image cascade on real models, run locally, with its plan before and after."""

from __future__ import annotations

import time

import numpy as np

from cloudflow_nb.examples.cascade import cascade_flow
from cloudflow_nb.examples.digits import digits_dataset, weights_path


def main(requests: int = 200) -> None:
    """Run the cascade on held-out digits and print results, plans and latency."""
    print("training or loading the digit models ...", flush=True)
    weights_path()
    _, _, test_x, test_y = digits_dataset()
    flow = cascade_flow()
    print("\n" + flow.explain(optimized=False))
    print("\n" + flow.explain(optimized=True))

    latencies, answers, models = [], [], []
    for image in test_x[:requests]:
        start = time.perf_counter()
        row = flow.run({"image": image})[0]
        latencies.append((time.perf_counter() - start) * 1e3)
        answers.append(row["answer"])
        models.append(row["model"])
    accuracy = float(np.mean(np.array(answers) == test_y[:requests]))
    print(f"\nlocal engine: {requests} requests, accuracy {accuracy:.1%}, "
          f"{models.count('cnn')} sent to the CNN, "
          f"latency p50 {np.percentile(latencies, 50):.2f} ms, p99 {np.percentile(latencies, 99):.2f} ms")
    print(flow.run([{"image": x} for x in test_x[:5]]).to_pandas()[["qid", "label", "conf", "answer", "model"]])


if __name__ == "__main__":
    main()
