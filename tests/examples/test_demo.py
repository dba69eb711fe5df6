"""The demo's figures: plurals, and per-stage lines that name workers and devices plainly."""

from __future__ import annotations

from cloudflow_nb.examples.demo import plural, stage_lines


def test_plural() -> None:
    assert plural(1, "stage") == "1 stage"
    assert plural(0, "stage") == "0 stages"
    assert plural(4, "request") == "4 requests"


def test_stage_lines_name_the_worker_and_its_device() -> None:
    replica = {"worker": "tcp://127.0.0.1:34535", "device": "cpu", "calls": 7}
    stats = {
        "stages": {
            "resnet101": {
                "count": 28,
                "p50_ms": 180.5,
                "batching": 16,
                "mean_batch": 1.5,
                "gpu": True,
                "replicas": [replica],
            },
            "join": {"count": 28, "p50_ms": None, "batching": None, "gpu": False, "replicas": []},
        }
    }
    gpu, join = stage_lines(stats, {"tcp://127.0.0.1:34535": "gpu-worker-0"})
    assert "28 requests" in gpu
    assert "mean batch 1.5" in gpu
    assert "[GPU stage on gpu-worker-0 (cpu)]" in gpu
    assert "port" not in gpu
    assert "[CPU stage on the router]" in join
    assert "batch" not in join
