"""The gradient verdict engine: numeric against analytic derivatives, in float64, as data.

`check_ops(system, names)` checks registered ops, `check_model(spec)` a spec's model and loss; both
return `OpReport`s. See checks.py for what each op gets, derivatives.py for how.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from knightctl.errors import PluginError
from knightctl.gradcheck.checks import check_op
from knightctl.gradcheck.report import CheckResult, Kink, Mismatch, OpReport

if TYPE_CHECKING:
    from knightctl.plugins.system import PluginSystem

__all__ = ["check_op", "check_ops", "CheckResult", "Kink", "Mismatch", "OpReport"]


def check_ops(
    system: PluginSystem,
    names: Sequence[str] = (),
    *,
    device: str = "cpu",
    order: int | None = None,
    method: str = "auto",
    atol: float | None = None,
    rtol: float | None = None,
) -> list[OpReport]:
    """Check the named ops (default: every registered op); an unknown name is a PluginError."""
    registry = system.registry
    unknown = [name for name in names if registry.get("op", name) is None]
    if unknown:
        raise PluginError(registry.unknown_name_message("op", unknown[0]))
    ops = [registry.get("op", name) for name in names] if names else registry.ops()
    return [check_op(op, device=device, order=order, method=method, atol=atol, rtol=rtol) for op in ops]
