"""``GET /metrics``: a deployment's figures in Prometheus text format, read at scrape time.

Nothing here runs on the request path: :class:`StatsCollector` calls ``dep.stats()`` when
Prometheus scrapes, and :func:`families` (pure, unit-tested from a stats dict) turns those figures
into metric families. Each endpoint has a ``CollectorRegistry`` of its own, never the global one.

=======================================  =========  ============================================
metric                                   type       labels
=======================================  =========  ============================================
``cloudflow_up``                         gauge      flow (0 once the deployment is closed)
``cloudflow_requests_total``             counter    flow
``cloudflow_request_errors_total``       counter    flow
``cloudflow_request_rejections_total``   counter    flow (refused for want of room: HTTP 429)
``cloudflow_request_latency_seconds``    histogram  flow
``cloudflow_stage_calls_total``          counter    flow, stage
``cloudflow_stage_errors_total``         counter    flow, stage, kind (the error's class)
``cloudflow_stage_rejections_total``     counter    flow, stage
``cloudflow_stage_retries_total``        counter    flow, stage (calls sent again after a replica was lost)
``cloudflow_stage_skipped_total``        counter    flow, stage (answered without a call: all inputs empty)
``cloudflow_stage_latency_seconds``      histogram  flow, stage
``cloudflow_stage_batch_size``           histogram  flow, stage (batching stages only)
``cloudflow_stage_queue_depth``          gauge      flow, stage
``cloudflow_stage_inflight``             gauge      flow, stage
``cloudflow_stage_replicas``             gauge      flow, stage, worker, device
``cloudflow_stage_replica_seconds_total`` counter   flow, stage (time calls held replicas: racing's cost)
``cloudflow_stage_hedges_sent_total``    counter    flow, stage (hedged stages only)
``cloudflow_stage_hedges_won_total``     counter    flow, stage (the hedge answered first)
``cloudflow_http_requests_total``        counter    path, status
=======================================  =========  ============================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from cloudflow_nb.errors import FlowError
from cloudflow_nb.runtime.stats import LATENCY_BUCKETS

__all__ = ["BATCH_BUCKETS", "StatsCollector", "families", "registry"]

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Metric = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily


def registry(flow: str, stats: Callable[[], dict[str, Any]], http: Mapping[tuple[str, int], int]) -> CollectorRegistry:
    """A registry of its own holding one :class:`StatsCollector`."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatsCollector(flow, stats, http))
    return reg


class StatsCollector(Collector):
    """Reads ``stats()`` (``dep.stats``) and the HTTP answers by ``(path, status)`` at each scrape."""

    def __init__(self, flow: str, stats: Callable[[], dict[str, Any]], http: Mapping[tuple[str, int], int]) -> None:
        self.flow = flow
        self.stats = stats
        self.http = http

    def collect(self) -> Iterator[Metric]:
        try:
            figures: dict[str, Any] | None = self.stats()
        except FlowError:  # closed, or its loop is gone: only the HTTP figures and up = 0
            figures = None
        yield from families(self.flow, figures, dict(self.http))


def families(flow: str, stats: dict[str, Any] | None, http: Mapping[tuple[str, int], int]) -> list[Metric]:
    """The metric families for a deployment's ``stats`` (``None``: it is down) and HTTP answer counts."""
    up = GaugeMetricFamily("cloudflow_up", "Whether the deployment serves (1) or is closed (0)", labels=["flow"])
    up.add_metric([flow], 0 if stats is None else 1)
    out: list[Metric] = [up]
    if stats is not None:
        out += _request_families(flow, stats["requests"])
        out += _stage_families(flow, stats["stages"])
    answers = CounterMetricFamily("cloudflow_http_requests", "HTTP requests answered", labels=["path", "status"])
    for (path, status), n in sorted(http.items()):
        answers.add_metric([path, str(status)], n)
    out.append(answers)
    return out


def _request_families(flow: str, req: dict[str, Any]) -> list[Metric]:
    labels = ["flow"]
    count = CounterMetricFamily("cloudflow_requests", "Requests finished, failed or not", labels=labels)
    errors = CounterMetricFamily("cloudflow_request_errors", "Requests that failed", labels=labels)
    rejected = CounterMetricFamily("cloudflow_request_rejections", "Requests refused for want of room", labels=labels)
    latency = HistogramMetricFamily("cloudflow_request_latency_seconds", "Request latency", labels=labels)
    count.add_metric([flow], req["count"])
    errors.add_metric([flow], req["errors"])
    rejected.add_metric([flow], req["rejected"])
    latency.add_metric([flow], *_latency_buckets(req["histogram"]))
    return [count, errors, rejected, latency]


def _stage_families(flow: str, stages: dict[str, Any]) -> list[Metric]:
    labels = ["flow", "stage"]
    calls = CounterMetricFamily("cloudflow_stage_calls", "Stage calls finished, failed or not", labels=labels)
    errors = CounterMetricFamily("cloudflow_stage_errors", "Stage calls that failed", labels=[*labels, "kind"])
    rejected = CounterMetricFamily("cloudflow_stage_rejections", "Calls refused for want of room", labels=labels)
    retries = CounterMetricFamily("cloudflow_stage_retries", "Calls sent again after a replica was lost", labels=labels)
    skipped = CounterMetricFamily(
        "cloudflow_stage_skipped", "Calls answered without a replica: every input was empty", labels=labels
    )
    latency = HistogramMetricFamily("cloudflow_stage_latency_seconds", "Stage call latency", labels=labels)
    batches = HistogramMetricFamily("cloudflow_stage_batch_size", "Calls per batch", labels=labels)
    queued = GaugeMetricFamily("cloudflow_stage_queue_depth", "Calls waiting for a replica", labels=labels)
    inflight = GaugeMetricFamily("cloudflow_stage_inflight", "Calls at the replicas", labels=labels)
    replicas = GaugeMetricFamily(
        "cloudflow_stage_replicas", "Live replicas per worker and device", labels=[*labels, "worker", "device"]
    )
    cost = CounterMetricFamily(
        "cloudflow_stage_replica_seconds", "Seconds calls held replicas, racers and hedges included", labels=labels
    )
    hedges = CounterMetricFamily("cloudflow_stage_hedges_sent", "Second copies sent to a late call", labels=labels)
    won = CounterMetricFamily("cloudflow_stage_hedges_won", "Hedges that answered first", labels=labels)
    for name, stage in stages.items():
        key = [flow, name]
        calls.add_metric(key, stage["count"])
        cost.add_metric(key, stage.get("replica_seconds", 0.0))
        if stage.get("hedge"):
            hedges.add_metric(key, stage["hedge"]["sent"])
            won.add_metric(key, stage["hedge"]["won"])
        for kind, n in sorted(stage["error_kinds"].items()):
            errors.add_metric([*key, kind], n)
        rejected.add_metric(key, stage["rejected"])
        retries.add_metric(key, stage["retries"])
        skipped.add_metric(key, stage.get("skipped", 0))
        latency.add_metric(key, *_latency_buckets(stage["histogram"]))
        if "batches" in stage:
            batches.add_metric(key, *_batch_buckets(stage["batches"]))
        queued.add_metric(key, stage["queued"])
        inflight.add_metric(key, stage["inflight"])
        placed: dict[tuple[str, str], int] = {}
        for replica in stage["replicas"]:
            where = (replica["worker"], replica["device"])
            placed[where] = placed.get(where, 0) + 1
        for (worker, device), n in sorted(placed.items()):
            replicas.add_metric([*key, worker, device], n)
    return [calls, errors, rejected, retries, skipped, latency, batches, queued, inflight, replicas, cost, hedges, won]


def _latency_buckets(histogram: dict[str, Any]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative ``(le, count)`` pairs (``+Inf`` last) and the sum, from calls per bucket."""
    return _cumulative(LATENCY_BUCKETS, histogram["counts"]), histogram["sum_s"]


def _batch_buckets(batches: Mapping[int, int]) -> tuple[list[tuple[str, float]], float]:
    """The same for batch sizes, from ``{size: batches of that size}``."""
    counts = [0] * (len(BATCH_BUCKETS) + 1)
    for size, n in batches.items():
        counts[next((i for i, le in enumerate(BATCH_BUCKETS) if size <= le), len(BATCH_BUCKETS))] += n
    return _cumulative(BATCH_BUCKETS, counts), float(sum(size * n for size, n in batches.items()))


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    total = 0
    for le, n in zip((*map(_le, bounds), "+Inf"), counts, strict=True):
        total += n
        out.append((le, total))
    return out


def _le(bound: float) -> str:
    return str(float(bound))
