"""The derivative checks: reverse mode (any order) and forward mode, against finite differences.

Each takes the op's samples as `Target`s (float64 copies) and returns one `CheckResult`. Exact
compares every Jacobian entry; fast tests random projections u^T J on groups of input elements
and judges single elements only where a group disagrees (fastmode.py), each against a tolerance
built from the per-entry one (|sum_j u_j e_j| <= sum_j |u_j| tol_j), so a correct op never fails
it while a 1% error in any one element still shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD

from knightctl.errors import one_line
from knightctl.gradcheck.compare import Tally
from knightctl.gradcheck.fastmode import fast_reverse
from knightctl.gradcheck.jacobian import Target, analytic_jacobian, as_outputs, numeric_chunks, vjp
from knightctl.gradcheck.report import CheckResult

EXACT_MAX_ENTRIES = 2**20  # Jacobian entries per sample up to which "auto" compares them all (8 MiB)
FORWARD_MAX_ELEMENTS = 4096  # forward mode takes one jvp per input element


def live_copy(target: Target) -> tuple[Target, list[torch.Tensor]]:
    """A copy of `target` whose differentiable inputs are fresh leaves that require grad."""
    args = list(target.args)
    leaves = []
    for position in target.wrt:
        args[position] = args[position].detach().requires_grad_()
        leaves.append(args[position])
    return replace(target, args=tuple(args)), leaves


def entries(target: Target) -> int:
    outs = as_outputs(target.fn(*target.args))
    return sum(o.numel() for o in outs) * sum(target.args[p].numel() for p in target.wrt)


def derivative_of(fn: Callable[..., Any], wrt: Sequence[int], cotangents: Sequence[torch.Tensor]) -> Callable[..., Any]:
    """g(*args) = the vjp of fn at args with fixed cotangents: checking g checks fn's next order."""

    def g(*args: Any) -> tuple[torch.Tensor, ...]:
        with torch.enable_grad():
            args_list = list(args)
            for position in wrt:
                if not args_list[position].requires_grad:
                    args_list[position] = args_list[position].detach().requires_grad_()
            outs = as_outputs(fn(*args_list))
            return tuple(vjp(outs, [args_list[p] for p in wrt], cotangents, batched=False, create_graph=True))

    return g


def reverse(
    name: str, targets: Sequence[Target], atol: float, rtol: float, method: str, seed: int = 0
) -> tuple[CheckResult, Tally]:
    """Reverse mode (vector-Jacobian products) against central differences, every sample."""
    result, _, tally, _ = reverse_and_undefined(name, targets, atol, rtol, method, seed)
    return result, tally


def reverse_and_undefined(
    name: str, targets: Sequence[Target], atol: float, rtol: float, method: str, seed: int = 0
) -> tuple[CheckResult, CheckResult, Tally, Tally]:
    """Reverse mode, and "undefined grad": inputs whose backward returns None (`Target.undefined`)
    are judged apart, as a zero gradient against the finite differences, so that a None where the
    derivative is not zero is told as what it is."""
    started = time.perf_counter()
    tally, undefined = Tally(atol, rtol), Tally(atol, rtol)
    used, none_inputs = set(), set()
    for s, target in enumerate(targets):
        live, xs = live_copy(target)
        outs = live.call({})
        tallies = [undefined if i in target.undefined else tally for i in range(len(xs))]
        none_inputs.update(target.input_name(i) for i in target.undefined)
        exact = method == "exact" or (method == "auto" and entries(target) <= EXACT_MAX_ENTRIES)
        used.add("exact" if exact else "fast")
        if exact:
            _exact(live, outs, xs, tallies, s)
        else:
            fast_reverse(live, outs, xs, tallies, s, torch.Generator().manual_seed(seed + s))
    how = "/".join(sorted(used))
    seconds = time.perf_counter() - started
    if not none_inputs:
        none_result = CheckResult("undefined grad", "passed", "no input's gradient is None")
    elif undefined.failed:
        inputs = ", ".join(sorted(none_inputs))
        detail = f"the backward returns None for {inputs}, whose derivative is not zero ({undefined.failed} element(s))"
        none_result = _result("undefined grad", undefined, how, 0.0, targets, detail)
    else:
        none_result = CheckResult(
            "undefined grad",
            "passed",
            f"None only where the derivative is zero ({', '.join(sorted(none_inputs))})",
            how,
        )
    return _result(name, tally, how, seconds, targets), none_result, tally, undefined


def _result(
    name: str, tally: Tally, method: str, seconds: float, targets: Sequence[Target], detail: str = ""
) -> CheckResult:
    status = "failed" if tally.failed else "passed"
    detail = detail or (f"{tally.failed} element(s) out of tolerance" if tally.failed else "")
    return CheckResult(
        name, status, detail, method, tally.max_abs_error, tally.max_rel_error, tally.finished_worst(targets), seconds
    )


def _exact(
    live: Target, outs: Sequence[torch.Tensor], xs: Sequence[torch.Tensor], tallies: Sequence[Tally], sample: int
) -> None:
    jacobian = analytic_jacobian(outs, xs)  # [output][input]: (in_numel, out_numel)
    for i, x in enumerate(xs):
        for chunk in numeric_chunks(live, outs, i):
            for j, out in enumerate(outs):
                tallies[i].judge_block(
                    jacobian[j][i][chunk.lo : chunk.hi], chunk, j, where=(sample, j, i), shapes=(out.shape, x.shape)
                )


def higher_order(order: int, targets: Sequence[Target], atol: float, rtol: float, method: str) -> CheckResult:
    """Order n: reverse-check the (n-1)-th vjp of the op, built with create_graph, against differences of it.

    A derivative that comes back outside autograd is either constant (2.5 * x: its derivative
    has no graph, and is zero) or cut off (once_differentiable); the numbers tell which.
    """
    derived = []
    detached = False
    for s, target in enumerate(targets):
        fn = target.fn
        generator = torch.Generator().manual_seed(1000 + s)
        for _ in range(order - 1):
            live, xs = live_copy(Target(fn, target.args, target.wrt))
            outs = live.call({})
            cotangents = [torch.randn(o.shape, dtype=o.dtype, generator=generator).to(o.device) for o in outs]
            fn = derivative_of(fn, target.wrt, cotangents)
            detached = detached or not any(g.requires_grad for g in as_outputs(fn(*live.args)))
        derived.append(Target(fn, target.args, target.wrt, vmap_ok=False))  # autograd.grad does not run under vmap
    result, _ = reverse(f"order {order}", derived, atol, rtol, method)
    if detached and result.status == "failed":
        result.status = "unsupported"
        result.detail = (
            f"the backward is not differentiable (once_differentiable, or computed outside autograd); {result.detail}"
        )
    return result


def forward(targets: Sequence[Target], atol: float, rtol: float) -> CheckResult:
    """Forward mode: one Jacobian-vector product per input element, against central differences."""
    started = time.perf_counter()
    tally = Tally(atol, rtol)
    for s, target in enumerate(targets):
        outs = target.call({})
        for i, position in enumerate(target.wrt):
            x = target.args[position].detach()
            if x.numel() > FORWARD_MAX_ELEMENTS:
                return CheckResult(
                    "forward",
                    "skipped",
                    f"sample {s} input {i} has {x.numel()} elements; forward mode is checked up to "
                    f"{FORWARD_MAX_ELEMENTS}",
                )
            try:
                columns, any_tangent = _tangent_columns(target, position, x, outs)
            except (NotImplementedError, RuntimeError) as exc:  # no jvp: torch says so in words
                return CheckResult(
                    "forward",
                    "unsupported",
                    f"forward-mode AD raised {one_line(exc)}",
                )
            chunks = list(numeric_chunks(target, outs, i))
            if not any_tangent and any(bool(c.abs().max() > 0) for chunk in chunks for c in chunk.central if c.numel()):
                return CheckResult(
                    "forward",
                    "unsupported",
                    "forward-mode AD gave no tangent: torch.func.jacfwd would silently return zeros here",
                )
            for chunk in chunks:
                for j, out in enumerate(outs):
                    tally.judge_block(
                        columns[j][chunk.lo : chunk.hi], chunk, j, where=(s, j, i), shapes=(out.shape, x.shape)
                    )
    return _result("forward", tally, "exact", time.perf_counter() - started, targets)


def _tangent_columns(
    target: Target, position: int, x: torch.Tensor, outs: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], bool]:
    """d outputs / d x by forward mode, one dual number per element, input-major; and whether any tangent came back."""
    columns: list[list[torch.Tensor]] = [[] for _ in outs]
    any_tangent = False
    with fwAD.dual_level():
        for k in range(x.numel()):
            tangent = torch.zeros_like(x).reshape(-1)
            tangent[k] = 1.0
            results = target.call({position: fwAD.make_dual(x, tangent.reshape(x.shape))})
            for j, out in enumerate(results):
                unpacked = fwAD.unpack_dual(out).tangent
                any_tangent = any_tangent or unpacked is not None
                columns[j].append(
                    unpacked.reshape(-1)
                    if unpacked is not None
                    else torch.zeros(out.numel(), dtype=out.dtype, device=out.device)
                )
    return [torch.stack(column) for column in columns], any_tangent  # input-major: (in_numel, out_numel)
