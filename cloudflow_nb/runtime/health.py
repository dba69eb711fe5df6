"""Replica health as a sans-I/O policy: probe replies in, drain and stop instructions out.

Every few seconds the controller asks each worker hosting replicas how they are (calls held, and
how long the running batch has run). A replica is unhealthy when a call has run past the stage
timeout (a hung model, a deadlock in user code) or when its worker stopped answering probes for
``probe_failures`` rounds in a row (a blocked event loop). An unhealthy replica is drained: the
router stops sending it calls, its queued calls go to other replicas, and a fresh replica takes
its place. A drained replica is stopped once it is idle, its worker forgot it, or it stayed busy
for ``stop_after`` seconds (a thread stuck in user code cannot be interrupted; the replica object
is dropped all the same).

Examples
--------
>>> policy = HealthPolicy(stage_timeout=5.0)
>>> serving = [Serving("m", "dep/m/0", "w1")]
>>> policy.step(0.0, serving, {"w1": {"dep/m/0": ReplicaProbe(active=3, running_for=7.5)}})
[Drain(stage='m', replica='dep/m/0', worker='w1', reason='a call has run 7.5 s, past the stage timeout of 5 s')]
>>> policy.step(1.0, [], {"w1": {"dep/m/0": ReplicaProbe(active=0, running_for=0.0)}})
[Stop(stage='m', replica='dep/m/0', worker='w1', reason='drained and idle')]
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Drain", "HealthPolicy", "ReplicaProbe", "Serving", "Stop"]

PROBE_FAILURES = 3  # probes in a row a worker may miss before its replicas count as unhealthy


@dataclass(frozen=True)
class ReplicaProbe:
    """A worker's answer about one replica: calls it holds, and seconds its running batch has run."""

    active: int
    running_for: float


@dataclass(frozen=True)
class Serving:
    """A replica the router sends calls to."""

    stage: str
    replica: str
    worker: str


@dataclass(frozen=True)
class Drain:
    """Stop routing to ``replica``, send its queued calls elsewhere, and replace it."""

    stage: str
    replica: str
    worker: str
    reason: str


@dataclass(frozen=True)
class Stop:
    """Stop a drained replica."""

    stage: str
    replica: str
    worker: str
    reason: str


Probes = Mapping[str, "Mapping[str, ReplicaProbe] | None"]


class HealthPolicy:
    """Decides which replicas to drain and when drained ones may stop.

    Parameters
    ----------
    stage_timeout : float
        Seconds one call may run before its replica counts as hung.
    probe_failures : int
        Probes in a row a worker may miss before its replicas count as unhealthy.
    stop_after : float, optional
        Seconds a drained replica may stay busy before it is stopped anyway
        (default: four stage timeouts, at least a minute).
    """

    def __init__(self, stage_timeout: float, probe_failures: int = PROBE_FAILURES, stop_after: float | None = None):
        if stage_timeout <= 0:
            raise ValueError(f"stage_timeout must be positive, got {stage_timeout!r}")
        self.stage_timeout = stage_timeout
        self.probe_failures = probe_failures
        self.stop_after = max(60.0, 4 * stage_timeout) if stop_after is None else stop_after
        self.missed: Counter[str] = Counter()  # probes missed in a row, per worker
        self.draining: dict[str, tuple[Serving, float]] = {}
        self.drained = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=20)

    def step(self, now: float, serving: Sequence[Serving], probes: Probes) -> list[Drain | Stop]:
        """One round: ``probes`` has, per probed worker, its replies by replica id (``None``: it did
        not answer). Workers not in ``probes`` were not probed this round."""
        for worker, reply in probes.items():
            self.missed[worker] = self.missed[worker] + 1 if reply is None else 0
        out: list[Drain | Stop] = []
        for rep in serving:
            if rep.replica in self.draining or rep.worker not in probes:
                continue
            reason = self._unhealthy(rep, probes[rep.worker])
            if reason:
                self.draining[rep.replica] = (rep, now)
                self.drained += 1
                out.append(self._note(now, Drain(rep.stage, rep.replica, rep.worker, reason)))
        for replica, (rep, since) in list(self.draining.items()):
            reason = self._stoppable(rep, probes.get(rep.worker, {}), now - since)
            if reason:
                del self.draining[replica]
                out.append(self._note(now, Stop(rep.stage, rep.replica, rep.worker, reason)))
        return out

    def forget(self, replica: str) -> None:
        """A drained replica went away by other means (its worker left)."""
        self.draining.pop(replica, None)

    def _unhealthy(self, rep: Serving, reply: Mapping[str, ReplicaProbe] | None) -> str:
        if reply is None:
            if self.missed[rep.worker] >= self.probe_failures:
                return f"its worker missed {self.missed[rep.worker]} health probes in a row"
            return ""
        probe = reply.get(rep.replica)
        if probe is None:
            return "its worker no longer knows it"
        if probe.running_for > self.stage_timeout:
            return f"a call has run {probe.running_for:.1f} s, past the stage timeout of {self.stage_timeout:g} s"
        return ""

    def _stoppable(self, rep: Serving, reply: Mapping[str, ReplicaProbe] | None, age: float) -> str:
        if reply is not None:
            probe = reply.get(rep.replica)
            if probe is None:
                return "its worker no longer knows it"
            if probe.active == 0:
                return "drained and idle"
        if age > self.stop_after:
            return f"still busy {age:.0f} s after it was drained"
        return ""

    def _note(self, now: float, instruction: Drain | Stop) -> Drain | Stop:
        action = "drain" if isinstance(instruction, Drain) else "stop"
        self.recent.append(
            {
                "at": round(now, 3),
                "action": action,
                "stage": instruction.stage,
                "worker": instruction.worker,
                "reason": instruction.reason,
            }
        )
        return instruction

    def summary(self) -> dict[str, Any]:
        """For ``dep.stats()["health"]``: replicas drained so far, those draining now, recent decisions."""
        return {
            "stage_timeout": self.stage_timeout,
            "drained": self.drained,
            "draining": sorted(self.draining),
            "missed_probes": {w: n for w, n in self.missed.items() if n},
            "recent": list(self.recent),
        }
