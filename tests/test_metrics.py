"""``/metrics`` figures from a deployment's stats, parsed back with prometheus_client's parser (no server)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import cloudflow_nb as cf
from cloudflow_nb.metrics import families, registry
from cloudflow_nb.probes import not_ready
from cloudflow_nb.runtime.stats import LATENCY_BUCKETS, Recorder


def stage(recorder, **extra):
    return {
        **recorder.summary(),
        "replicas": [
            {"worker": "tcp://127.0.0.1:1", "device": "cpu", "calls": 3},
            {"worker": "tcp://127.0.0.1:1", "device": "cpu", "calls": 0},
            {"worker": "tcp://127.0.0.1:2", "device": "cuda:0", "calls": 1},
        ],
        "in_router": False,
        "queued": 4,
        "inflight": 2,
        **extra,
    }


def fake_stats():
    requests, model = Recorder(), Recorder()
    for seconds in (0.0004, 0.003, 0.003, 0.2, 99.0):
        requests.record(seconds)
    requests.record(0.01, ok=False)
    requests.rejected = 1
    model.record(0.002, batch=2)
    model.record(0.002, batch=2)
    model.record(0.004, ok=False, batch=1, kind="OperatorError")
    model.record(0.5, ok=False, kind="FlowTimeoutError")
    model.rejected, model.retries = 5, 1
    return {
        "flow": "demo",
        "requests": requests.summary(),
        "stages": {
            "model": stage(
                model, replica_seconds=1.5, hedge={"after": "p90", "threshold_ms": 12.0, "sent": 7, "won": 3}
            ),
            "pre": stage(Recorder(), replicas=[], replica_seconds=0.25, hedge=None),
        },
        "lease": {"lost": None},
    }


def scrape(stats):
    return scrape_with(lambda: stats, {})


def scrape_with(stats, http):
    reg = registry("demo", stats, http)
    text = generate_latest(reg).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name, **labels):
    return samples[name, tuple(sorted(labels.items()))]


def test_request_figures():
    samples = scrape(fake_stats())
    assert value(samples, "cloudflow_up", flow="demo") == 1
    assert value(samples, "cloudflow_requests_total", flow="demo") == 6
    assert value(samples, "cloudflow_request_errors_total", flow="demo") == 1
    assert value(samples, "cloudflow_request_rejections_total", flow="demo") == 1
    hist = "cloudflow_request_latency_seconds"
    assert value(samples, hist + "_bucket", flow="demo", le="0.0005") == 1
    assert value(samples, hist + "_bucket", flow="demo", le="0.005") == 3
    assert value(samples, hist + "_bucket", flow="demo", le="30.0") == 5  # the 99 s one is only under +Inf
    assert value(samples, hist + "_bucket", flow="demo", le="+Inf") == 6
    assert value(samples, hist + "_count", flow="demo") == 6
    assert abs(value(samples, hist + "_sum", flow="demo") - 99.2164) < 1e-9


def test_stage_figures():
    samples = scrape(fake_stats())
    key = {"flow": "demo", "stage": "model"}
    assert value(samples, "cloudflow_stage_calls_total", **key) == 4
    assert value(samples, "cloudflow_stage_errors_total", kind="OperatorError", **key) == 1
    assert value(samples, "cloudflow_stage_errors_total", kind="FlowTimeoutError", **key) == 1
    assert value(samples, "cloudflow_stage_rejections_total", **key) == 5
    assert value(samples, "cloudflow_stage_retries_total", **key) == 1
    assert value(samples, "cloudflow_stage_latency_seconds_count", **key) == 4
    assert value(samples, "cloudflow_stage_batch_size_bucket", le="1.0", **key) == 1  # batches: one of 1, one of 2
    assert value(samples, "cloudflow_stage_batch_size_bucket", le="+Inf", **key) == 2
    assert value(samples, "cloudflow_stage_batch_size_sum", **key) == 3
    assert value(samples, "cloudflow_stage_queue_depth", **key) == 4
    assert value(samples, "cloudflow_stage_inflight", **key) == 2
    assert value(samples, "cloudflow_stage_replicas", worker="tcp://127.0.0.1:1", device="cpu", **key) == 2
    assert value(samples, "cloudflow_stage_replicas", worker="tcp://127.0.0.1:2", device="cuda:0", **key) == 1
    assert ("cloudflow_stage_batch_size_count", (("flow", "demo"), ("stage", "pre"))) not in samples


def test_racing_cost_and_hedges():
    samples = scrape(fake_stats())
    key = {"flow": "demo", "stage": "model"}
    assert value(samples, "cloudflow_stage_replica_seconds_total", **key) == 1.5
    assert value(samples, "cloudflow_stage_replica_seconds_total", flow="demo", stage="pre") == 0.25
    assert value(samples, "cloudflow_stage_hedges_sent_total", **key) == 7
    assert value(samples, "cloudflow_stage_hedges_won_total", **key) == 3
    assert ("cloudflow_stage_hedges_sent_total", (("flow", "demo"), ("stage", "pre"))) not in samples  # not hedged


def test_http_answers_and_a_closed_deployment():
    def closed():
        raise cf.DeploymentError("deployment 'demo' is closed")

    samples = scrape_with(closed, {("/predict", 200): 3, ("/predict", 429): 1})
    assert value(samples, "cloudflow_up", flow="demo") == 0
    assert value(samples, "cloudflow_http_requests_total", path="/predict", status="200") == 3
    assert value(samples, "cloudflow_http_requests_total", path="/predict", status="429") == 1
    assert not any(name.startswith("cloudflow_stage") for name, _ in samples)


def test_families_are_pure_and_cover_every_bucket():
    stats = fake_stats()
    names = [f.name for f in families("demo", stats, {})]
    assert names == sorted(set(names), key=names.index)  # each family once
    (latency,) = [f for f in families("demo", stats, {}) if f.name == "cloudflow_request_latency_seconds"]
    assert len([s for s in latency.samples if s.name.endswith("_bucket")]) == len(LATENCY_BUCKETS) + 1


def test_readiness_names_each_stage_without_a_replica():
    stats = fake_stats()
    assert not_ready(stats) == ["stage 'pre' has no live replica"]
    stats["stages"]["pre"]["in_router"] = True
    assert not_ready(stats) == []
    stats["lease"]["lost"] = "the lease of deployment 'demo' was lost"
    assert not_ready(stats) == ["the lease of deployment 'demo' was lost"]
