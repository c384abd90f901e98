"""`check_op`: every check one op gets, composed from small ones, into one `OpReport`.

The op runs on each of its samples in float64 (MPS has none: there it runs on the CPU and the
report says so). Checks, in order: the forward against the `reference`; reverse mode; forward
mode; second order and up; batched gradients (vmap); `torch.library.opcheck` for library ops. A
capability the op declares it lacks is "unsupported", one it claims and lacks is "failed", and an
op that raises is "error" naming the exception, never a crash.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from knightctl.gradcheck.derivatives import forward, higher_order, reverse
from knightctl.gradcheck.jacobian import Target, as_outputs, batched_vjp, vjp
from knightctl.gradcheck.report import CheckResult, OpReport
from knightctl.opinfo import form_of
from knightctl.registry import OpDef

DEFAULT_ORDER = 2


def _error(check: str, exc: BaseException, sample: int | None = None) -> CheckResult:
    where = f"sample {sample}: " if sample is not None else ""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return CheckResult(check, "error", f"{where}{type(exc).__name__}: {message}")


def sample_targets(op: OpDef, device: torch.device) -> list[Target]:
    """The op's samples in float64 on `device`, differentiated w.r.t. their floating-point tensors."""
    targets = []
    for args in op.sample_inputs(device, torch.float64):
        args = tuple(a.detach().to(device=device, dtype=torch.float64) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        wrt = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point())
        targets.append(Target(op.fn, args, wrt))
    return targets


def check_reference(op: OpDef, targets: list[Target], atol: float, rtol: float) -> CheckResult:
    """The op's forward against its pure-torch reference, every sample."""
    if op.reference is None:
        return CheckResult("reference", "skipped", "no reference given")
    worst = 0.0
    for s, target in enumerate(targets):
        got, expected = target.call({}), as_outputs(op.reference(*target.args))
        for j, (a, b) in enumerate(zip(got, expected)):
            if a.shape != b.shape:
                return CheckResult("reference", "failed", f"sample {s} output {j}: shape {tuple(a.shape)}, reference {tuple(b.shape)}")
            error = (a - b).abs()
            worst = max(worst, float(error.max()) if error.numel() else 0.0)
            if bool((error > atol + rtol * b.abs()).any()):
                return CheckResult("reference", "failed", f"sample {s} output {j}: differs from the reference by up to {float(error.max()):.3g}", max_abs_error=worst)
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
            mapped = torch.vmap(lambda row: target.call({position: row}))(batch)
            args = list(target.args)
            leaves = [args[p].detach().requires_grad_() for p in target.wrt]
            for p, leaf in zip(target.wrt, leaves):
                args[p] = leaf
            outs = as_outputs(op.fn(*args))
            cotangents = [torch.linspace(-1, 1, 3 * o.numel(), dtype=o.dtype, device=o.device).reshape(3, *o.shape) for o in outs]
            batched, fell_back = batched_vjp(outs, leaves, cotangents)
        except Exception as exc:
            status = "failed" if op.vmap else "unsupported"
            return CheckResult("batched", status, f"sample {s}: torch.vmap raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        if fell_back:
            return CheckResult("batched", "failed" if op.vmap else "unsupported", f"sample {s}: the backward cannot be batched: {fell_back}")
        looped = [target.call({position: row}) for row in batch]
        for j, out in enumerate(mapped):
            expected = torch.stack([row[j] for row in looped])
            if not torch.allclose(out, expected, atol=atol, rtol=rtol):
                return CheckResult("batched", "failed", f"sample {s} output {j}: vmap of the forward differs from a loop by {float((out - expected).abs().max()):.3g}")
        for b in range(3):
            single = vjp(outs, leaves, [c[b] for c in cotangents], batched=False)
            for i, (g_batched, g_single) in enumerate(zip(batched, single)):
                if not torch.allclose(g_batched[b], g_single, atol=atol, rtol=rtol):
                    return CheckResult("batched", "failed", f"sample {s} input {i}: the batched backward differs from a single one by {float((g_batched[b] - g_single).abs().max()):.3g}")
    return CheckResult("batched", "passed")


def check_library(op: OpDef, targets: list[Target]) -> CheckResult:
    """`torch.library.opcheck`: schema, fake tensor, autograd registration, AOT dispatch (not gradient values)."""
    for s, target in enumerate(targets):
        args = tuple(a.detach().requires_grad_() if i in target.wrt else a for i, a in enumerate(target.args))
        try:
            torch.library.opcheck(op.fn, args)
        except Exception as exc:
            return CheckResult("opcheck", "failed", f"sample {s}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
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
    op: OpDef, *, device: str = "cpu", order: int | None = None, method: str = "auto", atol: float | None = None, rtol: float | None = None, library: bool = True
) -> OpReport:
    """Every check for `op` on all its samples in float64; tolerances default to the op's own.

    `library=False` leaves out `torch.library.opcheck` (about a second per op; it checks
    registrations, not gradient values).
    """
    started = time.perf_counter()
    atol = op.atol if atol is None else atol
    rtol = op.rtol if rtol is None else rtol
    note = ""
    if device == "mps":
        device, note = "cpu", "MPS has no float64: checked on the CPU"
    report = OpReport(op.name, op.plugin, device, note=note)
    try:
        targets = sample_targets(op, torch.device(device))
        for s, target in enumerate(targets):
            try:
                target.call({})
            except Exception as exc:
                report.checks.append(_error("forward pass", exc, s))
                return _finish(report, started)
    except Exception as exc:
        report.checks.append(_error("sample_inputs", exc))
        return _finish(report, started)
    report.checks.append(_timed(lambda: check_reference(op, targets, atol, rtol), "reference"))
    report.checks.extend(_derivative_checks(op, targets, atol, rtol, method, order, report))
    report.checks.append(_timed(lambda: check_batched(op, targets, atol, rtol), "batched"))
    if library and form_of(op.fn) == "custom_op":
        report.checks.append(_timed(lambda: check_library(op, targets), "opcheck"))
    return _finish(report, started)


def _derivative_checks(op: OpDef, targets: list[Target], atol: float, rtol: float, method: str, order: int | None, report: OpReport) -> list[CheckResult]:
    if op.surrogate_gradient:
        reason = f"surrogate gradient by design: {op.surrogate_gradient}"
        return [CheckResult("reverse", "skipped", reason), CheckResult("forward", "skipped", reason)]
    results: list[CheckResult] = []

    def first_order() -> CheckResult:
        result, tally = reverse("reverse", targets, atol, rtol, method)
        report.kinks.extend(tally.kinks.values())
        return result

    results.append(_timed(first_order, "reverse"))
    if op.forward_mode is False:
        results.append(CheckResult("forward", "unsupported", "declared: no forward mode"))
    else:
        result = _timed(lambda: forward(targets, atol, rtol), "forward")
        if op.forward_mode and result.status in ("unsupported", "error"):
            result.status = "failed"  # claimed, and does not work
        results.append(result)
    top = order if order is not None else max(DEFAULT_ORDER, op.max_order or 0)
    for n in range(2, top + 1):
        if op.max_order is not None and n > op.max_order:
            results.append(CheckResult(f"order {n}", "unsupported", f"declared: derivatives up to order {op.max_order}"))
            continue
        result = _timed(lambda n=n: higher_order(n, targets, atol, rtol, method), f"order {n}")  # type: ignore[misc]
        if op.max_order is not None and result.status == "unsupported":
            result.status = "failed"
        results.append(result)
    return results


def _finish(report: OpReport, started: float) -> OpReport:
    report.seconds = time.perf_counter() - started
    return report
