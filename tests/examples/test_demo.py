"""The demo: plurals, per-stage lines that name workers plainly, and figures that agree in a real run."""

from __future__ import annotations

import re

import pytest

from cloudflow_nb.examples import demo
from cloudflow_nb.examples.assets import AssetError
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
                "count": 20,
                "skipped": 8,
                "p50_ms": 180.5,
                "batching": 16,
                "mean_batch": 1.5,
                "gpu": True,
                "replicas": [replica],
            },
            "join": {"count": 28, "skipped": 0, "p50_ms": None, "batching": None, "gpu": False, "replicas": []},
        }
    }
    gpu, join = stage_lines(stats, {"tcp://127.0.0.1:34535": "gpu-worker-0"})
    assert "28 requests (8 without rows)" in gpu
    assert "28 requests, p50" in join
    assert "mean batch 1.5" in gpu
    assert "[GPU stage on gpu-worker-0 (cpu)]" in gpu
    assert "port" not in gpu
    assert "[CPU stage on the router]" in join
    assert "batch" not in join


@pytest.mark.cluster
@pytest.mark.slow
def test_demo_runs_and_its_figures_agree(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        demo.main(requests=2, small=True, clients=2, rounds=1)
    except AssetError as exc:
        pytest.skip(f"the ImageNet weights or class names could not be fetched: {exc}")
    out = capsys.readouterr().out
    assert "chelsea           -> 'Egyptian cat'" in out
    assert "coffee            -> 'espresso'" in out
    for title, stages in (("unoptimized", 6), ("optimized", 4)):
        header = re.search(rf"^{title}: (\d+) stages, (\d+) requests served, (\d+) of them", out, re.MULTILINE)
        assert header is not None, out
        assert int(header.group(1)) == stages
        assert int(header.group(2)) == 6  # 2 to warm up, 2 one at a time, 2 in a burst
        block = out[header.end() :].split("\n\n")[0]
        counts = re.findall(r" (\d+) requests(?: \(\d+ without rows\))?, p50", block)
        assert counts == [header.group(2)] * stages, block
