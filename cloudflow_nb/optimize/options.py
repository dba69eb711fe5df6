"""``cf.Optimize``: the one frozen options object every optimizer entry point takes."""

from __future__ import annotations

from dataclasses import dataclass, fields

from cloudflow_nb.errors import OptimizerError

__all__ = ["Optimize"]


@dataclass(frozen=True)
class Optimize:
    """Which rewrites the optimizer applies, and their parameters.

    Parameters
    ----------
    fusion : bool
        Fuse linear chains of operators into one stage.
    whole : bool
        Fuse the whole flow into a single stage (the paper's cascade and video pipelines).
    compete : int
        Racing replicas for operators marked ``high_variance`` (1 turns racing off).
    hedge_after : str, float or None
        Hedge operators marked ``high_variance`` instead of racing them: a call goes to one
        replica, and a second copy to another only when the first has not answered after this
        long: a percentile of the stage's own recent latency (``"p90"``, ``"p99.5"``) or a number
        of milliseconds. The first answer wins and the other copy is cancelled. Such a stage has
        ``max(2, compete)`` replicas. ``None`` (the default) races as ``compete`` says.
    batching : bool
        Batch concurrent requests for operators marked ``batching``.
    max_batch_size, max_batch_wait_ms
        A replica's batch: at most this many requests; an idle replica holds its first request at
        most this long for more to arrive. The default 0 never waits: a batch is what queued while
        the previous one ran, so light load keeps its latency and heavy load still batches.
    gpu : bool
        Place stages with GPU operators on GPU-tagged workers.
    locality : bool
        Run a dynamic lookup's stage on a worker that holds the key.
    gather : bool
        Run the joins and unions that end the flow in the deployment's router, a call less each
        (their result comes back to the router anyway).

    Examples
    --------
    >>> Optimize(compete=3).compete
    3
    >>> Optimize.none().fusion
    False
    """

    fusion: bool = True
    whole: bool = False
    compete: int = 2
    batching: bool = True
    max_batch_size: int = 16
    max_batch_wait_ms: float = 0.0
    gpu: bool = True
    locality: bool = True
    hedge_after: str | float | None = None
    gather: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "hedge_after":
                object.__setattr__(self, f.name, _hedge_after(self.hedge_after))
                continue
            value = getattr(self, f.name)
            kinds: dict[str, type | tuple[type, ...]] = {"bool": bool, "int": int, "float": (int, float)}
            expected = kinds[str(f.type)]
            if not isinstance(value, expected) or (f.type != "bool" and isinstance(value, bool)):
                raise OptimizerError(f"Optimize: {f.name} must be {f.type}, got {value!r}")
        if self.compete < 1:
            raise OptimizerError(f"Optimize: compete must be at least 1, got {self.compete!r}")
        if self.max_batch_size < 1:
            raise OptimizerError(f"Optimize: max_batch_size must be at least 1, got {self.max_batch_size!r}")
        if self.max_batch_wait_ms < 0:
            raise OptimizerError(f"Optimize: max_batch_wait_ms must be >= 0, got {self.max_batch_wait_ms!r}")

    @property
    def hedging(self) -> bool:
        """Whether high-variance stages are hedged rather than raced."""
        return self.hedge_after is not None

    @classmethod
    def none(cls) -> Optimize:
        """No rewrites: one stage per operator (GPU operators still go to GPU workers)."""
        return cls(fusion=False, compete=1, batching=False, locality=False, gather=False)


_HEDGE_FORMS = "None, a percentile such as 'p90' or 'p99.5' (50 to 99.99), or a positive number of milliseconds"


def _hedge_after(value: object) -> str | float | None:
    """``hedge_after`` checked: ``None``, ``"pNN"`` (normalized, e.g. ``"p90"``) or ms as a float."""
    if value is None:
        return None
    if isinstance(value, str) and value.startswith("p"):
        try:
            q = float(value[1:])
        except ValueError:
            q = -1.0
        if 50 <= q < 100:
            return f"p{q:g}"
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf"):
        return float(value)
    raise OptimizerError(f"Optimize: hedge_after must be {_HEDGE_FORMS}; got {value!r}")
