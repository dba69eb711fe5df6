"""Which workers hold each store value: placement and re-replication, decided without I/O.

The store's directory (:class:`~cloudflow_nb.runtime.store.StoreDirectory`) asks two questions
and does what the answers say:

- :func:`place`: the holders of keys being written: the key's current holders, topped up to the
  replication factor with new ones;
- :func:`plan_repairs`: after a holder left (or a worker joined), which keys are short of copies,
  which surviving holder copies each of them, and to which new holder.

New holders are chosen by one rule, :func:`choose_holders`: distinct workers, untagged (CPU)
workers before GPU-tagged ones, fewest keys first, the address breaking ties. A cluster smaller
than the replication factor keeps one copy per worker.

Examples
--------
>>> from cloudflow_nb.runtime.placement import WorkerInfo
>>> workers = [WorkerInfo("a"), WorkerInfo("b"), WorkerInfo("c")]
>>> plan_repairs({"k": ["a"]}, set(), workers, replicas=2, load={"a": 1, "b": 5})
[Copy(source='a', target='c', keys=('k',))]
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass

from cloudflow_nb.runtime.placement import WorkerInfo

__all__ = ["Copy", "choose_holders", "place", "plan_repairs"]


@dataclass(frozen=True)
class Copy:
    """An instruction: the holder ``source`` pushes its copies of ``keys`` to ``target``."""

    source: str
    target: str
    keys: tuple[Hashable, ...]


def choose_holders(
    n: int, workers: Sequence[WorkerInfo], load: Mapping[str, int], exclude: Collection[str]
) -> list[str]:
    """Up to ``n`` distinct new holders, none in ``exclude``: untagged workers first, then the
    fewest keys (``load``), then the address."""
    ranked = sorted(
        (w for w in workers if w.address not in exclude), key=lambda w: (w.gpu, load.get(w.address, 0), w.address)
    )
    return [w.address for w in ranked[: max(n, 0)]]


def place(
    keys: Sequence[Hashable],
    holders: Mapping[Hashable, Sequence[str]],
    workers: Sequence[WorkerInfo],
    replicas: int,
    load: Mapping[str, int],
) -> dict[Hashable, list[str]]:
    """The holders of each key being written: its live holders, then new ones up to ``replicas``
    (or every worker, when there are fewer). Each choice counts towards the load of the next."""
    live = {w.address for w in workers}
    want = min(replicas, len(workers))
    load = dict(load)
    out: dict[Hashable, list[str]] = {}
    for key in keys:
        current = [h for h in holders.get(key, ()) if h in live]
        added = choose_holders(want - len(current), workers, load, current)
        for address in added:
            load[address] = load.get(address, 0) + 1
        out[key] = current + added
    return out


def plan_repairs(
    holders: Mapping[Hashable, Sequence[str]],
    filling: Collection[tuple[Hashable, str]],
    workers: Sequence[WorkerInfo],
    replicas: int,
    load: Mapping[str, int],
) -> list[Copy]:
    """The copies that bring every key back to ``replicas`` holders (or one per worker).

    ``holders`` lists each key's holders, ``filling`` the ``(key, holder)`` pairs whose copy is
    still on its way: such a holder counts towards the key's copies but cannot be a source. A key
    with no complete copy left is beyond repair and gets no instruction. One :class:`Copy` per
    (source, target) pair, keys in ``holders`` order.
    """
    live = {w.address for w in workers}
    want = min(replicas, len(workers))
    load = dict(load)
    batches: dict[tuple[str, str], list[Hashable]] = {}
    for key, listed in holders.items():
        current = [h for h in listed if h in live]
        sources = [h for h in current if (key, h) not in filling]
        if not sources or len(current) >= want:
            continue
        for target in choose_holders(want - len(current), workers, load, current):
            load[target] = load.get(target, 0) + 1
            batches.setdefault((sources[0], target), []).append(key)
    return [Copy(source, target, tuple(keys)) for (source, target), keys in batches.items()]
