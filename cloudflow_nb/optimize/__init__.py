"""The optimizer: logical plan -> physical ``Plan``, in named, inspectable passes.

Passes, in order (see :data:`PASSES`): ``logical`` (one stage per operator), ``fused``
(:mod:`.fusion`), ``gathered`` (:mod:`.gathering`), ``competed`` (:mod:`.competition`),
``batched`` (:mod:`.batching`), ``placed`` (:mod:`.placement`) and ``localized``
(:mod:`.locality`). Each rule records a
:class:`~cloudflow_nb.physical.Decision` for what it did or declined.
"""

from __future__ import annotations

from cloudflow_nb.errors import OptimizerError
from cloudflow_nb.optimize.options import Optimize
from cloudflow_nb.optimize.passes import PASSES, optimize, optimize_until

__all__ = ["PASSES", "Optimize", "optimize", "optimize_until", "resolve_options"]


def resolve_options(options: Optimize | bool | None) -> Optimize:
    """``None``/``True`` -> defaults, ``False`` -> no rewrites, an ``Optimize`` as given."""
    if options is None or options is True:
        return Optimize()
    if options is False:
        return Optimize.none()
    if isinstance(options, Optimize):
        return options
    raise OptimizerError(f"optimize: expected True, False or a cf.Optimize, got {type(options).__name__}")
