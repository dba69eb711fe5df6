"""Text renderings of plans, checked against golden files (CF_UPDATE_SNAPSHOTS=1 rewrites them)."""

from __future__ import annotations

import pytest
from snapshots import check, flows

import cloudflow_nb as cf
from cloudflow_nb.optimize import PASSES

CASES = {
    "cascade": (flows.cascade, cf.Optimize()),
    "cascade_whole": (flows.cascade, cf.Optimize(whole=True)),
    "nmt": (flows.nmt, cf.Optimize(compete=3)),
    "recommender": (flows.recommender, cf.Optimize()),
    "video_whole": (flows.video, cf.Optimize(whole=True)),
    "router": (flows.racing_router, cf.Optimize()),
    "chain_unoptimized": (lambda: flows.chain(4), cf.Optimize.none()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_explain_optimized_plan(case):
    build, options = CASES[case]
    check(f"explain_{case}.txt", build().explain(options=options))


def test_explain_logical_plan():
    check("explain_logical_cascade.txt", flows.cascade().explain(optimized=False))


def test_explain_each_pass():
    flow = flows.cascade()
    check("explain_cascade_passes.txt", "\n\n".join(flow.explain(stage=p) for p in PASSES))


def test_compare_text():
    check("compare_cascade.txt", str(cf.compare(flows.cascade())))


def test_explain_lists_every_rule_once_in_pass_order():
    text = flows.nmt().explain(options=cf.Optimize(compete=3))
    headers = [line for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headers == ["fusion:", "gathering:", "competition:", "batching:", "placement:", "locality:"]


def test_explain_is_deterministic():
    assert flows.video().explain() == flows.video().explain()
    assert str(cf.compare(flows.nmt())) == str(cf.compare(flows.nmt()))


def test_compare_repr_is_one_short_line():
    assert repr(cf.compare(flows.cascade())) == "<cf.compare 'cascade': 6 stages -> 4 stages>"
