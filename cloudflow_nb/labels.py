"""Human labels for user callables: ``preprocess``, ``ResNet``, ``<lambda at cell:3>``."""

from __future__ import annotations

import functools
import os
from typing import Any

__all__ = ["callable_label"]


def callable_label(fn: Any) -> str:
    """A short, stable, machine-independent name for a user function or class."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name == "<lambda>":
        code = getattr(fn, "__code__", None)
        if code is None:
            return "<lambda>"
        return f"<lambda at {_source_name(code.co_filename)}:{code.co_firstlineno}>"
    return name


def _source_name(path: str) -> str:
    """A file's basename; notebook cells (ipykernel temp files) read as ``cell``."""
    if "ipykernel_" in path or path.startswith("<ipython-input") or path.startswith("<cell"):
        return "cell"
    return os.path.basename(path) or path
