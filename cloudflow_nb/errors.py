"""The error hierarchy: everything cloudflow_nb raises on bad input is a ``FlowError``."""

from __future__ import annotations

__all__ = [
    "DeploymentError",
    "FlowError",
    "FlowTimeoutError",
    "MissingKeyError",
    "OperatorError",
    "OptimizerError",
    "OverloadError",
    "SchemaError",
]


class FlowError(Exception):
    """Base class of every error cloudflow_nb raises on bad input or failed requests."""


class SchemaError(FlowError, TypeError):
    """A value, a column or an argument does not match what an operator expects."""


class MissingKeyError(FlowError, LookupError):
    """A lookup asked the store for a key it does not hold and no default was given."""


class OperatorError(FlowError):
    """A user function raised; the original exception is chained as ``__cause__``.

    Attributes
    ----------
    operator : str
        The label of the failing operator, e.g. ``"map 'preprocess'"``.
    """

    def __init__(self, message: str, operator: str = "") -> None:
        super().__init__(message)
        self.operator = operator

    def __reduce__(self):  # keep ``operator`` across pickling (worker -> client)
        return (type(self), (self.args[0], self.operator))


class OptimizerError(FlowError):
    """The optimizer was misused or did not converge."""


class DeploymentError(FlowError):
    """A flow cannot be deployed on a cluster (e.g. a GPU stage but no GPU-tagged worker)."""


class FlowTimeoutError(FlowError, TimeoutError):
    """A request did not finish before its deadline."""


class OverloadError(FlowError):
    """A request was refused at once because a stage had no room for it (HTTP 429).

    Attributes
    ----------
    stage : str
        The stage that refused it.
    retry_after : float
        Seconds after which a retry is likely to be admitted.
    """

    def __init__(self, message: str, stage: str = "", retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.stage = stage
        self.retry_after = retry_after

    def __reduce__(self):  # keep the attributes across pickling (worker -> client)
        return (type(self), (self.args[0], self.stage, self.retry_after))
