"""Admission control and health on a real LocalCluster: overload is refused at once, expired work
never runs, and a hung replica is drained and replaced while other requests keep being answered."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import cloudflow_nb as cf

pytestmark = pytest.mark.cluster

X = cf.Flow("xs", x=int)


@pytest.fixture(scope="module")
def cluster() -> Iterator[cf.LocalCluster]:
    with cf.LocalCluster(workers=2, gpu_workers=0, dashboard=False) as c:
        yield c


def marked(folder: Path):
    """A map that leaves a file named after ``x`` in ``folder``, then sleeps ``x`` hundredths of a
    second (``x < 0``: 20 s, a hung call)."""

    def mark(row):
        (folder / str(row["x"])).touch()
        time.sleep(20 if row["x"] < 0 else row["x"] / 100)
        return row["x"]

    return mark


def _finish_times(futures: list[concurrent.futures.Future]) -> dict[int, float]:
    done: dict[int, float] = {}
    lock = threading.Lock()
    for i, future in enumerate(futures):

        def note(_, i=i):
            with lock:
                done[i] = time.monotonic()

        future.add_done_callback(note)
    return done


def test_overload_is_refused_at_once_with_retry_after(cluster, tmp_path):
    flow = X.map(marked(tmp_path), names={"y": int})
    with cluster.deploy(flow, max_inflight=1, max_queue=2) as dep:
        futures = [dep.submit({"x": 50 + i}) for i in range(10)]
        finished = _finish_times(futures)
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=60).column("y")[0])
            except cf.OverloadError as exc:
                outcomes.append(exc)
        admitted = [o for o in outcomes if not isinstance(o, Exception)]
        refused = [i for i, o in enumerate(outcomes) if isinstance(o, cf.OverloadError)]
        assert admitted == [50, 51, 52]  # one running, two queued, first come first served
        assert refused == list(range(3, 10))
        error = outcomes[3]
        assert error.stage == dep.plan.stages[0].name
        assert error.retry_after >= 1
        assert "is full" in str(error)
        assert max(finished[i] for i in refused) < min(finished[i] for i in range(3))  # refusals came first
        stats = dep.stats()
        assert stats["stages"][error.stage]["rejected"] == 7
        assert stats["requests"]["rejected"] == 7
        assert sorted(int(p.name) for p in tmp_path.iterdir()) == [50, 51, 52]  # refused work never ran


def test_a_call_whose_deadline_passed_in_the_queue_never_runs(cluster, tmp_path):
    with cluster.deploy(X.map(marked(tmp_path), names={"y": int})) as dep:
        first = dep.submit({"x": 150}, timeout=30)  # 1.5 s
        time.sleep(0.3)
        with pytest.raises(cf.FlowTimeoutError):
            dep.predict({"x": 7}, timeout=0.5)  # queued behind the first, expires there
        assert first.result(timeout=30).column("y") == [150]
        assert dep.predict({"x": 8}, timeout=30).column("y") == [8]
        assert not (tmp_path / "7").exists()


def test_a_hung_replica_is_drained_and_replaced(cluster, tmp_path):
    with cluster.deploy(X.map(marked(tmp_path), names={"y": int}), stage_timeout=1.0) as dep:
        stage = dep.plan.stages[0].name
        (hung_worker,) = [r["worker"] for r in dep.stats()["stages"][stage]["replicas"]]
        hung = dep.submit({"x": -1}, timeout=3)
        time.sleep(0.2)
        behind = [dep.submit({"x": i}, timeout=30) for i in range(1, 4)]  # queued behind the hung call
        assert [f.result(timeout=40).column("y") for f in behind] == [[1], [2], [3]]
        with pytest.raises(cf.FlowTimeoutError):
            hung.result(timeout=30)
        later = [dep.predict({"x": i}, timeout=30).column("y") for i in range(4, 8)]
        assert later == [[4], [5], [6], [7]]
        stats = dep.stats()
        assert stats["health"]["drained"] == 1
        assert "past the stage timeout" in stats["health"]["recent"][0]["reason"]
        (replica,) = stats["stages"][stage]["replicas"]
        assert replica["worker"] != hung_worker  # replaced on the other worker, which had room
        assert stats["stages"][stage]["inflight"] >= 1  # the hung call still counts until it ends
        assert stats["background"]["errors"] == {}


def test_closing_a_deployment_ends_its_running_requests_with_an_error(cluster, tmp_path):
    dep = cluster.deploy(X.map(marked(tmp_path), names={"y": int}))
    running = dep.submit({"x": 300}, timeout=30)  # 3 s
    time.sleep(0.3)
    dep.close()
    with pytest.raises(cf.DeploymentError, match="closed before the request finished"):
        running.result(timeout=30)
    with pytest.raises(cf.DeploymentError, match="closed"):
        dep.submit({"x": 1})
