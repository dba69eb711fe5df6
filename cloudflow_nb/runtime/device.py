"""``cf.device()``: the torch device a replica's user code should use."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

__all__ = ["device", "gpu_device_name", "using_device"]

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("cloudflow_device", default=None)


def gpu_device_name() -> str:
    """``cuda:0`` when this process sees a CUDA device, else ``cpu`` (a GPU-tagged worker without one)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def device() -> str:
    """The device for the calling operator: ``"cuda:N"`` on a GPU replica with a GPU, else ``"cpu"``.

    Inside a deployed replica this is the replica's device; in local runs it is ``"cpu"``.

    Examples
    --------
    >>> import cloudflow_nb as cf
    >>> cf.device()
    'cpu'
    """
    return _current.get() or "cpu"


@contextlib.contextmanager
def using_device(name: str) -> Iterator[None]:
    """Run a block with :func:`device` answering ``name``."""
    token = _current.set(name)
    try:
        yield
    finally:
        _current.reset(token)
