"""Adaptive racing as a sans-I/O policy: race a competitive stage's calls only while it pays.

Racing k replicas cuts the tail when the racers run on spare capacity (other machines, sleeping or
I/O-bound calls), and costs when they fight over the same cores: then every raced call is slower
than one sent to a single replica. The optimizer cannot tell which at plan time; the router can
measure it. :class:`RacePolicy` keeps the latencies of the last :data:`WINDOW` raced calls and of
the last :data:`WINDOW` single calls, and compares their median and tail (p95: for a window
this size, its second slowest call, so that one unlucky call does not decide):

- it starts by racing :data:`RACE_FIRST` calls as planned, then sends every other call to a
  single replica until it has :data:`MIN_SAMPLES` of both kinds (or :data:`EARLY` of both,
  when raced calls' median is already :data:`COSTS` times single's or more: racers fighting over
  the same cores need no long look);
- racing pays when raced calls are clearly faster on the median or the tail (at most :data:`PAYS`
  of single's) and not much slower on the other (at most :data:`WORSE`: racing may trade a little
  median for a much shorter tail, or the other way round); then it races, else it sends each
  call to one replica. Both figures count because a stage's calls may differ in work (a
  translator's empty batches and long sentences): a median alone can be one kind of call;
- either way it probes the other kind now and then, so a change (the load that slowed the racers
  went away, say) is noticed once probes have replaced the old figures: while not racing, a raced
  call after :data:`PROBE_RACED` calls, then twice as long after each probe that confirms the
  decision, up to :data:`PROBE_RACED_MAX` (a raced probe is a slow call when racing does not pay);
  and a single call in :data:`PROBE_SINGLE` while racing
  (much rarer: a single call is exposed to the very tail racing cuts, and a p99 is made of 1% of
  calls). Racers that start to slow each other down show in the raced figures at once, compared
  with the single figures kept, so probing singles while racing only refreshes those.

Latencies are compared under the same load, so the policy sees racers slowing each other down,
but not racing's cost to other stages sharing the cores. The router asks :meth:`RacePolicy.racers`
before each call and reports the answered ones to :meth:`RacePolicy.observe`; the policy never
sleeps nor sends.
"""

from __future__ import annotations

from collections import deque

from cloudflow_nb.runtime.stats import percentile

__all__ = [
    "COSTS",
    "EARLY",
    "MIN_SAMPLES",
    "PAYS",
    "PROBE_RACED",
    "PROBE_RACED_MAX",
    "PROBE_SINGLE",
    "RACE_FIRST",
    "WINDOW",
    "WORSE",
    "RacePolicy",
    "pays",
    "ratios",
]

WINDOW = 32  # recent latencies kept per kind (raced, single)
MIN_SAMPLES = 8  # of each kind before the policy decides anything (a median of fewer is noise)
EARLY = 4  # of each kind before it decides that racing clearly costs...
COSTS = 1.5  # ...its median at least this many times single's
RACE_FIRST = 4  # calls raced as planned before the first single one
PROBE_RACED = 10  # while not racing, one call in this many races at first...
PROBE_RACED_MAX = 320  # ...then, each probe that confirms racing does not pay, half as often, down to this
PROBE_SINGLE = 500  # while racing, one call in this many goes to a single replica
PAYS = 0.9  # racing pays when raced p50 or p95 is at most this fraction of single's...
WORSE = 1.25  # ...and the other at most this fraction
TAIL = 95  # the tail percentile compared


class RacePolicy:
    """How many replicas race the next call of one competitive stage.

    Parameters
    ----------
    planned : int
        Racers per call the plan asks for (``compete=k``).

    Examples
    --------
    >>> policy = RacePolicy(2)
    >>> [policy.racers() for _ in range(8)]  # races as planned, then learns
    [2, 2, 2, 2, 1, 2, 1, 2]
    >>> for _ in range(MIN_SAMPLES):
    ...     policy.observe(2, 0.160)
    ...     policy.observe(1, 0.100)
    >>> policy.racing
    False
    >>> policy.summary()
    'does not pay (raced p50 1.60x, p95 1.60x of single): one replica per call, probing'
    """

    def __init__(self, planned: int) -> None:
        self.planned = planned
        self.raced: deque[float] = deque(maxlen=WINDOW)
        self.single: deque[float] = deque(maxlen=WINDOW)
        self.racing = True  # races as planned until measured otherwise
        self.calls = 0
        self.interval = PROBE_RACED  # calls between two raced probes while not racing
        self._next_probe = 0
        self._ratios: tuple[float, float] | None = None

    def racers(self) -> int:
        """Replicas to race the next call on (1: send it to one)."""
        self.calls += 1
        if self._ratios is None:  # learning
            return 1 if self.calls > RACE_FIRST and (self.calls - RACE_FIRST) % 2 else self.planned
        if self.racing:
            return 1 if self.calls % PROBE_SINGLE == 0 else self.planned
        if self.calls >= self._next_probe:
            self._next_probe = self.calls + self.interval
            return self.planned
        return 1

    def observe(self, racers: int, seconds: float) -> None:
        """A call sent to ``racers`` replicas answered after ``seconds``."""
        (self.raced if racers > 1 else self.single).append(seconds)
        timed = min(len(self.raced), len(self.single))
        if timed < EARLY:
            return
        found = ratios(list(self.raced), list(self.single))
        if timed < MIN_SAMPLES and self._ratios is None and found[0] < COSTS:
            return  # still learning: only a clear cost ends it early
        self._ratios = found
        was = self.racing
        self.racing = pays(*found)
        if self.racing or was:  # a new decision against racing starts probing often again
            self.interval = PROBE_RACED
            self._next_probe = self.calls + PROBE_RACED
        elif racers > 1 and seconds >= PAYS * (percentile(list(self.single), 50) or 0.0):
            self.interval = min(2 * self.interval, PROBE_RACED_MAX)  # the probe confirmed it: probe half as often
        elif racers > 1:
            self.interval = PROBE_RACED  # a fast probe: look again soon

    def summary(self) -> str:
        """The decision and the figures behind it, for ``dep.stats()``."""
        if self._ratios is None:
            return (
                f"racing as planned, learning (timed {len(self.raced)} raced and {len(self.single)} single "
                f"calls, of {MIN_SAMPLES} each)"
            )
        p50, tail = self._ratios
        figures = f"raced p50 {p50:.2f}x, p{TAIL} {tail:.2f}x of single"
        if self.racing:
            return f"pays: {figures}"
        return f"does not pay ({figures}): one replica per call, probing"


def ratios(raced: list[float], single: list[float]) -> tuple[float, float]:
    """Raced latencies' p50 and p95 as fractions of single calls' (``inf`` when single's is 0).

    Examples
    --------
    >>> ratios([1.0, 2.0, 3.0], [4.0, 4.0, 6.0])
    (0.5, 0.5)
    """
    out = []
    for q in (50, TAIL):
        r, s = percentile(raced, q) or 0.0, percentile(single, q) or 0.0
        out.append(r / s if s > 0 else float("inf"))
    return out[0], out[1]


def pays(p50: float, tail: float) -> bool:
    """Whether racing pays: clearly faster on the median or the tail (at most :data:`PAYS` of
    single's), not much slower on the other (at most :data:`WORSE`).

    Examples
    --------
    >>> pays(1.2, 0.1), pays(0.85, 1.2), pays(1.3, 0.1), pays(0.5, 1.3), pays(0.95, 0.95)
    (True, True, False, False, False)
    """
    return min(p50, tail) <= PAYS and max(p50, tail) <= WORSE
