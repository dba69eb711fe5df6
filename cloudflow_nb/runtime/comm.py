"""What a failed call to a worker or the scheduler means, decided in one place.

A call fails for one of three reasons that callers must tell apart:

- the peer is gone (connection refused, reset or closed, a connect that timed out inside Dask):
  :func:`worker_gone` is true, and the caller routes around the peer;
- the call ran out of time (``asyncio.TimeoutError``, a ``FlowTimeoutError``): the peer may be
  alive but busy, which is a health question, not a membership one;
- the request itself failed (any ``FlowError``): the answer to give the user.

``TimeoutError`` is an ``OSError`` and so is ``FlowTimeoutError``: ``except OSError`` alone
cannot tell "gone" from "slow", which is why nothing else in the runtime catches ``OSError``
to mean "gone".
"""

from __future__ import annotations

from cloudflow_nb.errors import FlowError

__all__ = ["worker_gone"]


def worker_gone(exc: BaseException) -> bool:
    """Whether ``exc`` says the peer cannot be reached (a comm error), not a timeout or a request error.

    Examples
    --------
    >>> worker_gone(ConnectionResetError("reset by peer"))
    True
    >>> worker_gone(TimeoutError("slow"))
    False
    """
    return isinstance(exc, OSError) and not isinstance(exc, (TimeoutError, FlowError))
