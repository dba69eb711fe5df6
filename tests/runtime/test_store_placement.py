"""Where store copies go and how lost ones are replaced: the pure decisions, without Dask."""

from __future__ import annotations

from cloudflow_nb.runtime.placement import WorkerInfo
from cloudflow_nb.runtime.replication import Copy, choose_holders, place, plan_repairs

CPU = [WorkerInfo("a"), WorkerInfo("b"), WorkerInfo("c")]
GPU = WorkerInfo("g", gpu=True)


def test_new_holders_are_distinct_untagged_first_least_loaded_first():
    assert choose_holders(2, [GPU, *CPU], {"a": 3, "b": 1, "c": 1}, exclude=()) == ["b", "c"]
    assert choose_holders(2, [GPU, *CPU], {}, exclude={"a", "b"}) == ["c", "g"]  # a GPU worker when no CPU one is left
    assert choose_holders(5, CPU, {}, exclude=()) == ["a", "b", "c"]
    assert choose_holders(0, CPU, {}, exclude=()) == []


def test_place_keeps_holders_and_tops_up_spreading_the_load():
    chosen = place(["k1", "k2", "k3"], {"k1": ["c"]}, CPU, replicas=2, load={"c": 1})
    assert chosen["k1"][0] == "c"
    assert len(set(chosen["k1"])) == 2
    assert all(len(set(chosen[k])) == 2 for k in chosen)
    counts = {w: sum(w in hs for hs in chosen.values()) for w in "abc"}
    assert max(counts.values()) - min(counts.values()) <= 1


def test_place_on_a_small_cluster_uses_every_worker_and_drops_dead_holders():
    assert place(["k"], {}, [WorkerInfo("a")], replicas=3, load={}) == {"k": ["a"]}
    assert place(["k"], {"k": ["dead", "a"]}, CPU[:2], replicas=2, load={}) == {"k": ["a", "b"]}
    assert place(["k"], {}, [], replicas=2, load={}) == {"k": []}


def test_a_lost_holder_is_replaced_by_a_copy_from_a_survivor():
    holders = {"k1": ["a"], "k2": ["b"], "k3": ["a", "b"]}
    copies = plan_repairs(holders, set(), CPU, replicas=2, load={"a": 2, "b": 2})
    assert copies == [Copy("a", "c", ("k1",)), Copy("b", "c", ("k2",))]


def test_copies_are_batched_per_source_and_target_and_spread():
    holders = {f"k{i}": ["a"] for i in range(4)}
    copies = plan_repairs(holders, set(), CPU, replicas=2, load={"a": 4})
    assert {c.target for c in copies} == {"b", "c"}
    assert sorted(k for c in copies for k in c.keys) == sorted(holders)
    assert all(c.source == "a" for c in copies)


def test_nothing_to_do_when_full_beyond_repair_or_already_filling():
    assert plan_repairs({"k": ["a", "b"]}, set(), CPU, replicas=2, load={}) == []
    assert plan_repairs({"k": ["a"]}, {("k", "a")}, CPU, replicas=2, load={}) == []  # no complete copy left
    assert plan_repairs({"k": ["gone"]}, set(), CPU, replicas=2, load={}) == []
    # a holder still being filled counts as a copy but is never a source
    assert plan_repairs({"k": ["b", "a"]}, {("k", "b")}, CPU, replicas=3, load={}) == [Copy("a", "c", ("k",))]


def test_a_growing_cluster_fills_keys_kept_on_one_worker():
    one = plan_repairs({"k": ["a"]}, set(), CPU[:1], replicas=2, load={"a": 1})
    assert one == []
    assert plan_repairs({"k": ["a"]}, set(), CPU[:2], replicas=2, load={"a": 1}) == [Copy("a", "b", ("k",))]
    three = plan_repairs({"k": ["a"]}, set(), CPU, replicas=3, load={})
    assert three == [Copy("a", "b", ("k",)), Copy("a", "c", ("k",))]
