"""`check_op`: every check one op gets, composed from small ones, into one `OpReport`.

The op runs on each of its samples in float64 (MPS has none: there it runs on the CPU and the
report says so); a sample's arguments and the op's outputs may be any pytree. Checks, in order:
mutation and grad metadata (contracts.py), which a failure of stops the value checks, since
their numbers would be meaningless; the forward against the `reference`; reverse mode and
undefined gradients; linearity and reentrancy of the backward; forward mode; second order and up
(not after a nondeterministic backward: its finite differences are noise); batched gradients
(vmap); `torch.library.opcheck` for library ops. A capability the op declares it lacks is
"unsupported", one it claims and lacks is "failed", an op that raises is "error" naming the
exception, never a crash, and an op with nothing differentiable is "n/a", never "ok".
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from knightctl.errors import one_line
from knightctl.gradcheck.contracts import check_linearity_and_reentrancy, check_metadata, check_mutation
from knightctl.gradcheck.derivatives import forward, higher_order, reverse_and_undefined
from knightctl.gradcheck.jacobian import Target, as_outputs, batched_vjp, is_float_tensor, op_target, vjp
from knightctl.gradcheck.report import CheckResult, OpReport
from knightctl.gradcheck.vmapfallback import fallback_told
from knightctl.plugins.opsupport import LIBRARY_FORMS, form_of
from knightctl.plugins.registry import OpDef
from knightctl.plugins.sample import Sample

DEFAULT_ORDER = 2
_BLOCKING = ("mutation", "grad metadata")  # after one of these fails, gradient values mean nothing


def _error(check: str, exc: BaseException, sample: int | None = None) -> CheckResult:
    where = f"sample {sample}: " if sample is not None else ""
    return CheckResult(check, "error", f"{where}{one_line(exc)}")


def _as_sample(value: Any) -> Sample:
    if isinstance(value, Sample):
        return value
    return Sample(*value) if isinstance(value, (tuple, list)) else Sample(value)


def _with_options(fn: Any, sample: Sample, options: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The sample's arguments with `options` in place of the ones it gives, positionally or by name."""
    args, kwargs = tuple(sample.args), {**sample.kwargs}
    if not options:
        return args, kwargs
    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):  # no signature to read (some C callables): options go by name
        return args, {**kwargs, **options}
    bound.arguments.update(options)
    return tuple(bound.args), dict(bound.kwargs)


def sample_targets(op: OpDef, device: torch.device, options: Mapping[str, Any] | None = None) -> list[Target]:
    """The op's samples in float64 on `device` (with `options` as keyword arguments), as targets
    differentiated w.r.t. the floating-point tensors among their arguments (see `op_target`)."""
    targets = []
    for value in op.sample_inputs(device, torch.float64):
        sample = _as_sample(value)
        args, kwargs = _with_options(op.fn, sample, options or {})
        target = op_target(op.fn, args, kwargs, sample.select_output)
        leaves = tuple(
            leaf.detach().to(device=device, dtype=torch.float64) if is_float_tensor(leaf) else leaf
            for leaf in target.args
        )
        target.args = leaves
        targets.append(target)
    return targets


def check_reference(op: OpDef, targets: list[Target], atol: float, rtol: float) -> CheckResult:
    """The op's forward against its pure-torch reference, every sample."""
    if op.reference is None:
        return CheckResult("reference", "skipped", "no reference given")
    worst = 0.0
    for s, target in enumerate(targets):
        args, kwargs = target.structured()
        expected_out = op.reference(*args, **kwargs)
        got = target.call({})
        expected = as_outputs(expected_out if target.select_output is None else target.select_output(expected_out))
        if len(got) != len(expected):
            return CheckResult(
                "reference", "failed", f"sample {s}: {len(got)} floating-point output(s), the reference {len(expected)}"
            )
        for j, (a, b) in enumerate(zip(got, expected, strict=True)):
            if a.shape != b.shape:
                return CheckResult(
                    "reference", "failed", f"sample {s} output {j}: shape {tuple(a.shape)}, reference {tuple(b.shape)}"
                )
            error = (a - b).abs()
            worst = max(worst, float(error.max()) if error.numel() else 0.0)
            if bool((error > atol + rtol * b.abs()).any()):
                return CheckResult(
                    "reference",
                    "failed",
                    f"sample {s} output {j}: differs from the reference by up to {float(error.max()):.3g}",
                    max_abs_error=worst,
                )
    return CheckResult("reference", "passed", max_abs_error=worst)


def check_batched(op: OpDef, targets: list[Target], atol: float, rtol: float) -> CheckResult:
    """vmap over the forward, and a batched backward (`is_grads_batched`), against loops."""
    if op.vmap is False:
        return CheckResult("batched", "unsupported", "declared: no vmap support")
    for s, target in enumerate(targets):
        position = target.wrt[0]
        x = target.args[position].detach()
        batch = torch.stack([x, x * 0.5 + 0.25, x * 1.5 - 0.125])
        try:
            with fallback_told(target.unbatched):
                mapped = torch.vmap(lambda row, target=target, position=position: target.call({position: row}))(batch)
            args = list(target.args)
            leaves = [args[p].detach().requires_grad_() for p in target.wrt]
            for p, leaf in zip(target.wrt, leaves, strict=True):
                args[p] = leaf
            outs = as_outputs(target.fn(*args))
            cotangents = [
                torch.linspace(-1, 1, 3 * o.numel(), dtype=o.dtype, device=o.device).reshape(3, *o.shape) for o in outs
            ]
            batched, fell_back = batched_vjp(outs, leaves, cotangents)
        except Exception as exc:
            status = "failed" if op.vmap else "unsupported"
            return CheckResult("batched", status, f"sample {s}: torch.vmap raised {one_line(exc)}")
        if fell_back:
            return CheckResult(
                "batched",
                "failed" if op.vmap else "unsupported",
                f"sample {s}: the backward cannot be batched: {fell_back}",
            )
        looped = [target.call({position: row}) for row in batch]
        for j, out in enumerate(mapped):
            expected = torch.stack([row[j] for row in looped])
            if not torch.allclose(out, expected, atol=atol, rtol=rtol):
                return CheckResult(
                    "batched",
                    "failed",
                    f"sample {s} output {j}: vmap of the forward differs from a loop by "
                    f"{float((out - expected).abs().max()):.3g}",
                )
        for b in range(3):
            single = vjp(outs, leaves, [c[b] for c in cotangents], batched=False)
            for i, (g_batched, g_single) in enumerate(zip(batched, single, strict=True)):
                if not torch.allclose(g_batched[b], g_single, atol=atol, rtol=rtol):
                    return CheckResult(
                        "batched",
                        "failed",
                        f"sample {s} input {target.input_name(i)}: the batched backward differs from a single one by "
                        f"{float((g_batched[b] - g_single).abs().max()):.3g}",
                    )
    return CheckResult("batched", "passed")


def check_library(op: OpDef, targets: list[Target]) -> CheckResult:
    """`torch.library.opcheck`: schema, fake tensor, autograd registration, AOT dispatch (not gradient values)."""
    for s, target in enumerate(targets):
        leaves = [leaf.detach().requires_grad_() if i in target.wrt else leaf for i, leaf in enumerate(target.args)]
        args, kwargs = target.structured(leaves)
        try:
            torch.library.opcheck(op.fn, tuple(args), kwargs)
        except Exception as exc:
            return CheckResult("opcheck", "failed", f"sample {s}: {one_line(exc)}")
    return CheckResult("opcheck", "passed", "schema, fake tensor, autograd registration, AOT dispatch")


def _timed(check: Callable[[], CheckResult], name: str) -> CheckResult:
    started = time.perf_counter()
    try:
        result = check()
    except Exception as exc:
        result = _error(name, exc)
    if not result.seconds:
        result.seconds = time.perf_counter() - started
    return result


def check_op(
    op: OpDef,
    *,
    device: str = "cpu",
    order: int | None = None,
    method: str = "auto",
    atol: float | None = None,
    rtol: float | None = None,
    library: bool = True,
    options: Mapping[str, Any] | None = None,
) -> OpReport:
    """Every check for `op` on all its samples in float64; tolerances default to the op's own.

    `options` are keyword arguments given to every sample (the options a spec gives the op as a
    layer). `library=False` leaves out `torch.library.opcheck` (about a second per op; it checks
    registrations, not gradient values).
    """
    started = time.perf_counter()
    atol = op.atol if atol is None else atol
    rtol = op.rtol if rtol is None else rtol
    note = ""
    if device == "mps":
        device, note = "cpu", "MPS has no float64: checked on the CPU"
    report = OpReport(op.name, op.plugin, device, note=note, options=dict(options or {}))
    try:
        targets = sample_targets(op, torch.device(device), options)
    except Exception as exc:
        report.checks.append(_error("sample_inputs", exc))
        return _finish(report, started)
    try:
        mutation, raised = check_mutation(targets)
    except Exception as exc:
        mutation, raised = CheckResult("mutation", "skipped"), f"{one_line(exc)}"
    if raised:
        report.checks.append(CheckResult("forward pass", "error", raised))
        return _finish(report, started)
    nothing = _nothing_to_check(op, targets)
    if nothing:
        report.checks.extend(
            [*([mutation] if mutation.status == "failed" else []), CheckResult("gradients", "unsupported", nothing)]
        )
        return _finish(report, started)
    report.checks.append(mutation)
    if mutation.status == "passed":
        report.checks.append(_timed(lambda: check_metadata(targets), "grad metadata"))
    report.checks.append(_timed(lambda: check_reference(op, targets, atol, rtol), "reference"))
    blocked = next((c.check for c in report.checks if c.check in _BLOCKING and c.status == "failed"), None)
    if blocked:
        reason = f"not compared: the {blocked} check failed, so gradient values mean nothing"
        report.checks.extend(
            CheckResult(name, "skipped", reason) for name in ("reverse", "linearity", "forward", "batched")
        )
        return _finish(report, started)
    _mark_undefined(targets)
    report.checks.extend(_derivative_checks(op, targets, atol, rtol, method, order, report))
    report.checks.append(_timed(lambda: check_batched(op, targets, atol, rtol), "batched"))
    if library and form_of(op.fn) in LIBRARY_FORMS:
        report.checks.append(_timed(lambda: check_library(op, targets), "opcheck"))
    return _finish(report, started)


def _nothing_to_check(op: OpDef, targets: list[Target]) -> str:
    """Why nothing differentiable can be compared ("" if something can)."""
    if not op.differentiable:
        return "n/a: declared not differentiable"
    if not targets:
        return "n/a: sample_inputs gave no samples"
    if not any(target.wrt for target in targets):
        return "n/a: no floating-point input"
    if not any(target.call({}) for target in targets):
        return "n/a: no differentiable output"
    return ""


def _mark_undefined(targets: list[Target]) -> None:
    """Record per sample which inputs the backward gives None for (autograd.grad's allow_unused)."""
    for target in targets:
        args = list(target.args)
        leaves = []
        for position in target.wrt:
            args[position] = args[position].detach().requires_grad_()
            leaves.append(args[position])
        outs = [out for out in as_outputs(target.fn(*args)) if out.requires_grad]
        if not outs:
            target.undefined = frozenset(range(len(leaves)))
            continue
        try:
            grads = torch.autograd.grad(outs, leaves, [torch.ones_like(out) for out in outs], allow_unused=True)
        except Exception:
            continue  # the reverse check will name the error
        target.undefined = frozenset(i for i, g in enumerate(grads) if g is None)


def _derivative_checks(
    op: OpDef, targets: list[Target], atol: float, rtol: float, method: str, order: int | None, report: OpReport
) -> list[CheckResult]:
    if op.surrogate_gradient:
        reason = f"surrogate gradient by design: {op.surrogate_gradient}"
        return [CheckResult("reverse", "skipped", reason), CheckResult("forward", "skipped", reason)]
    results: list[CheckResult] = []
    undefined: list[CheckResult] = []

    def first_order() -> CheckResult:
        result, none_result, tally, _ = reverse_and_undefined("reverse", targets, atol, rtol, method)
        report.kinks.extend(tally.kinks.values())
        undefined.append(none_result)
        return result

    results.append(_timed(first_order, "reverse"))
    results.extend(undefined)
    try:
        linear, reentrant = check_linearity_and_reentrancy(targets, atol, rtol, op.nondet_tol)
    except Exception as exc:
        linear, reentrant = (
            _error("linearity", exc),
            CheckResult("reentrant", "skipped", "not run: the backward raised"),
        )
    results.extend([linear, reentrant])
    if op.forward_mode is False:
        results.append(CheckResult("forward", "unsupported", "declared: no forward mode"))
    else:
        result = _timed(lambda: forward(targets, atol, rtol), "forward")
        if op.forward_mode and result.status in ("unsupported", "error"):
            result.status = "failed"  # claimed, and does not work
        results.append(result)
    results.extend(
        _higher_orders(op, targets, atol, rtol, method, order, nondeterministic=reentrant.status == "failed")
    )
    return results


def _higher_orders(
    op: OpDef, targets: list[Target], atol: float, rtol: float, method: str, order: int | None, nondeterministic: bool
) -> list[CheckResult]:
    results = []
    top = order if order is not None else max(DEFAULT_ORDER, op.max_order or 0)
    for n in range(2, top + 1):
        if op.max_order is not None and n > op.max_order:
            results.append(
                CheckResult(f"order {n}", "unsupported", f"declared: derivatives up to order {op.max_order}")
            )
            continue
        if nondeterministic:
            results.append(
                CheckResult(
                    f"order {n}",
                    "skipped",
                    "not compared: the backward is not deterministic (see reentrant), so its finite differences are "
                    "noise",
                )
            )
            continue
        result = _timed(lambda n=n: higher_order(n, targets, atol, rtol, method), f"order {n}")  # type: ignore[misc]
        if op.max_order is not None and result.status == "unsupported":
            result.status = "failed"
        results.append(result)
    return results


def _finish(report: OpReport, started: float) -> OpReport:
    report.seconds = time.perf_counter() - started
    return report
