"""Is a ``LocalCluster`` being started where its worker processes would start it again?

Dask starts worker processes with ``spawn``: each one re-imports the script that runs as
``__main__``. A script that starts a cluster outside an ``if __name__ == "__main__":`` block
therefore starts one in every worker too, and Dask answers with pages of "Nanny failed to
start" tracebacks. :func:`check_main_guard` looks at the caller's stack before any process
starts and raises one ``DeploymentError`` naming the fix; :func:`guarded` is its pure core.
"""

from __future__ import annotations

import ast
import sys
from types import FrameType

from cloudflow_nb.errors import DeploymentError

__all__ = ["check_main_guard", "guarded"]

FIX = (
    'put the code that starts it under `if __name__ == "__main__":` (Dask starts worker processes '
    "that re-import your script, and each one would start a cluster of its own)"
)


def guarded(source: str, line: int) -> bool:
    """Whether ``line`` of the module ``source`` lies inside a top-level ``if __name__ == "__main__":``.

    Examples
    --------
    >>> guarded("import x\\nif __name__ == '__main__':\\n    x.run()\\n", 3)
    True
    >>> guarded("import x\\nx.run()\\n", 2)
    False
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return True  # cannot tell: never block a start on a guess
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_test(node.test):
            end = node.end_lineno or node.lineno
            if node.body[0].lineno <= line <= end:
                return True
    return False


def _is_main_test(test: ast.expr) -> bool:
    """``__name__ == "__main__"``, either way round."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    has_name = any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
    has_main = any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
    return has_name and has_main


def check_main_guard(frame: FrameType | None, method: str) -> None:
    """Raise ``DeploymentError`` when worker processes (started with ``method``) would re-run the
    code that starts this cluster: called from the main script's top level outside its guard, or
    from a worker process re-importing the script.

    ``frame`` is the caller's frame; the stack above it is searched for the main module's top level.
    """
    if method not in ("spawn", "forkserver"):
        return  # forked workers do not re-import the main module
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            name = frame.f_globals.get("__name__")
            if name == "__mp_main__":  # a spawned process is re-importing the script
                raise DeploymentError(f"LocalCluster: started while a worker process imports your script; {FIX}")
            if name == "__main__":
                if frame.f_globals is not getattr(sys.modules.get("__main__"), "__dict__", None):
                    return  # not the module spawned workers re-run (IPython's %run, exec)
                path = frame.f_globals.get("__file__")
                source = _read(path) if isinstance(path, str) else None
                if source is not None and not guarded(source, frame.f_lineno):
                    raise DeploymentError(
                        f"LocalCluster: started at the top level of {path!r} (line {frame.f_lineno}); {FIX}"
                    )
                return
        frame = frame.f_back


def _read(path: str) -> str | None:
    """The script's source, or ``None`` when it cannot be read (then nothing is checked)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None
