"""torch's vmap fallback for a custom_op without a batching rule: one line per op per process, not
torch's C++ warning (written to the file descriptor, so `capfd` is what sees it) at every vmap.

Each test vmaps an op of its own: the once-per-process record would otherwise depend on test order.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from knightctl import OpDef, VmapFallbackWarning
from knightctl.gradcheck.checks import check_batched
from knightctl.gradcheck.jacobian import op_target
from knightctl.gradcheck.vmapfallback import unbatched_op


def _scale(name: str, factor: float, *, vmap_rule: bool) -> torch.library.CustomOpDef:
    """A real custom_op y = factor * x with a backward, and a batching rule only if `vmap_rule`."""

    @torch.library.custom_op(f"vmaptold::{name}", mutates_args=())
    def op(x: torch.Tensor) -> torch.Tensor:
        return factor * x

    op.register_fake(lambda x: torch.empty_like(x))
    op.register_autograd(lambda ctx, grad: grad * factor, setup_context=lambda ctx, inputs, output: None)
    if vmap_rule:
        op.register_vmap(lambda info, in_dims, x: (factor * x, in_dims[0]))
    return op


NO_RULE_CHECKED = _scale("checked", 2.5, vmap_rule=False)
NO_RULE_MAPPED = _scale("mapped", 1.5, vmap_rule=False)
WITH_RULE = _scale("ruled", 0.5, vmap_rule=True)


def _target(fn):
    return op_target(fn, (torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3),), {})


def _fallback_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, VmapFallbackWarning)]


def test_a_custom_op_without_a_vmap_rule_is_told_once_in_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    op = OpDef(name="vmaptold::checked", fn=NO_RULE_CHECKED, sample_inputs=lambda device, dtype: [])
    target = _target(op.fn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # even so: once per op
        for _ in range(3):
            assert check_batched(op, [target], 1e-5, 1e-3).status == "passed"
        target.call_batched(0, torch.stack([target.args[0]] * 4))  # the numeric Jacobian's batches
    (message,) = _fallback_warnings(caught)
    assert message.startswith("vmap fallback: vmaptold::checked has no batching rule, so torch.vmap runs it once")
    assert "torch.library.register_vmap" in message and "PYTHONWARNINGS='ignore:vmap fallback'" in message
    assert "\n" not in message
    shown = warnings.formatwarning(caught[0].message, caught[0].category, caught[0].filename, caught[0].lineno)
    assert shown == f"warning: {message}\n"  # no file, no source line
    err = capfd.readouterr().err
    assert "performance drop" not in err and "BatchedFallback" not in err  # torch's own, switched off


def test_the_shells_filter_silences_it_and_torchs_warning_stays_off(capfd: pytest.CaptureFixture[str]) -> None:
    target = _target(NO_RULE_MAPPED)
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message="vmap fallback")  # what PYTHONWARNINGS='ignore:vmap fallback' adds
        target.call_batched(0, torch.stack([target.args[0]] * 2))
    assert _fallback_warnings(caught) == []
    assert "performance drop" not in capfd.readouterr().err


def test_only_a_library_op_without_a_rule_counts() -> None:
    assert unbatched_op(NO_RULE_CHECKED) == "vmaptold::checked"
    assert unbatched_op(torch.ops.vmaptold.checked) == "vmaptold::checked"  # the packet, and its overload
    assert unbatched_op(torch.ops.vmaptold.checked.default) == "vmaptold::checked"
    assert unbatched_op(WITH_RULE) is None
    assert unbatched_op(torch.sin) is None and unbatched_op(lambda x: x * 2) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        target = _target(WITH_RULE)
        target.call_batched(0, torch.stack([target.args[0]] * 2))
    assert _fallback_warnings(caught) == []
