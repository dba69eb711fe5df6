"""Competitive execution as a sans-I/O state machine: the first finisher wins.

A race has a fixed set of entrants (racing replicas, or a hedged call's two copies). Each one
ends with a table, a request error (the user's function raised: that is an answer too), or a
loss (its worker died or became unreachable). The first table or request error wins and the
rest are cancelled; losses only make way for the others, and when every entrant is lost the
caller retries elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["AllLost", "Keep", "Race", "Win"]


@dataclass(frozen=True)
class Win:
    """``entrant`` answered first with ``outcome``; cancel ``losers``."""

    entrant: Any
    outcome: Any
    losers: tuple[Any, ...]


@dataclass(frozen=True)
class Keep:
    """Keep waiting for the entrants still running."""


@dataclass(frozen=True)
class AllLost:
    """Every entrant was lost; retry on other replicas."""


class Race:
    """Decides a race among ``entrants``.

    Examples
    --------
    >>> race = Race(["a", "b", "c"])
    >>> race.lost("b")
    Keep()
    >>> race.answered("c", "table")
    Win(entrant='c', outcome='table', losers=('a',))
    """

    def __init__(self, entrants: list[Any]) -> None:
        self.running = list(entrants)
        self.decided = False

    def answered(self, entrant: Any, outcome: Any) -> Win | Keep:
        """``entrant`` finished with a table or a request error."""
        if self.decided:
            return Keep()
        self.decided = True
        self.running.remove(entrant)
        return Win(entrant, outcome, tuple(self.running))

    def lost(self, entrant: Any) -> Keep | AllLost:
        """``entrant`` will never answer."""
        self.running.remove(entrant)
        if self.running or self.decided:
            return Keep()
        return AllLost()
