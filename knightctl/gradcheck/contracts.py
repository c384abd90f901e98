"""An op's contract with autograd, checked beside its Jacobians: what torch's own checker looks at.

- mutation: calling the op leaves the caller's tensors as they were;
- grad metadata: the gradients the op's backward returns have each input's dtype, shape and device
  (autograd silently casts a float16 gradient to the input's dtype and sums a too-large one, and
  raises on one it cannot fit, so the check reads them before autograd does);
- linearity: the backward is linear in the incoming gradient, on random non-unit cotangents:
  vjp(a u + b w) = a vjp(u) + b vjp(w) and vjp(0) = 0, so a backward that ignores or mis-scales
  its gradient fails on any sample size (one-hot cotangents cannot see that on one element);
- reentrant: the backward run twice on one graph gives the same gradients, within `nondet_tol`.

Each takes the op's samples as `Target`s and returns one `CheckResult`. "undefined grad" (a None
gradient where the derivative is not zero) is judged with the Jacobians, in derivatives.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.autograd.function import BackwardCFunction

from knightctl.errors import one_line
from knightctl.gradcheck.jacobian import Target, as_outputs
from knightctl.gradcheck.report import CheckResult

_MAX_NODES = 10_000  # graph nodes walked to find the op's Python backward nodes


def check_mutation(targets: Sequence[Target]) -> tuple[CheckResult, str]:
    """Call the op once per sample on its own tensors; any tensor it changed fails. Returns the
    result and, if the op raised, "sample s: Error: message" (the forward pass error)."""
    for s, target in enumerate(targets):
        tensors = [(i, leaf) for i, leaf in enumerate(target.args) if isinstance(leaf, torch.Tensor)]
        before = [leaf.clone() for _, leaf in tensors]
        try:
            with torch.no_grad():
                target.fn(*target.args)
        except Exception as exc:
            return CheckResult("mutation", "skipped", "the forward raised"), f"sample {s}: {one_line(exc)}"
        for (i, leaf), original in zip(tensors, before, strict=True):
            if leaf.shape != original.shape or not torch.equal(leaf.nan_to_num(), original.nan_to_num()):
                name = target.names[i] if i < len(target.names) else f"args[{i}]"
                change = (
                    "resized it"
                    if leaf.shape != original.shape
                    else f"changed it by up to {float((leaf - original).abs().max()):.3g}"
                )
                with torch.no_grad():
                    leaf.set_(original)  # the caller's value back, so that the report can show it
                return CheckResult(
                    "mutation", "failed", f"sample {s}: the op changed its input {name} in place ({change})"
                ), ""
    return CheckResult("mutation", "passed"), ""


def _live(target: Target) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    args = list(target.args)
    leaves = []
    for position in target.wrt:
        args[position] = args[position].detach().requires_grad_()
        leaves.append(args[position])
    return leaves, list(as_outputs(target.fn(*args)))


def _python_nodes(outputs: Sequence[torch.Tensor]) -> list[Any]:
    """The Python backward nodes (autograd.Function, custom_op) in the graph behind `outputs`."""
    stack = [out.grad_fn for out in outputs if out.grad_fn is not None]
    seen: set[int] = set()
    found = []
    while stack and len(seen) < _MAX_NODES:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, BackwardCFunction):
            found.append(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


class _RawGradients:
    """Records what each Python backward node returns, before autograd validates and casts it.

    The engine calls a Python node through its `apply` attribute, so an instance attribute of that
    name sees the raw result; torch has no public hook before validation (Node hooks see the
    validated gradients). It is removed again on exit.
    """

    def __init__(self, nodes: list[Any]) -> None:
        self.nodes = nodes
        self.returned: dict[int, tuple[Any, ...]] = {}

    def __enter__(self) -> _RawGradients:
        for node in self.nodes:
            original = node.apply

            def recording(*grads: Any, node: Any = node, original: Any = original) -> Any:
                result = original(*grads)
                self.returned[id(node)] = result if isinstance(result, tuple) else (result,)
                return result

            node.apply = recording
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            del node.apply


def _metadata_problem(target: Target, leaves: list[torch.Tensor], raw: _RawGradients) -> tuple[str, int]:
    """The first raw gradient that does not fit the input it flows into; and how many were read."""
    owner = {id(leaf): i for i, leaf in enumerate(leaves)}
    read = 0
    for node in raw.nodes:
        returned = raw.returned.get(id(node), ())
        for k, (next_node, _) in enumerate(node.next_functions):
            i = owner.get(id(getattr(next_node, "variable", None)))
            if i is None or k >= len(returned) or not isinstance(returned[k], torch.Tensor):
                continue
            read += 1
            grad, leaf = returned[k], leaves[i]
            for what, got, want in (
                ("dtype", grad.dtype, leaf.dtype),
                ("shape", tuple(grad.shape), tuple(leaf.shape)),
                ("device", grad.device, leaf.device),
            ):
                if got != want:
                    return (
                        f"the backward returned a gradient of {what} {got} for input {target.input_name(i)} of {what} "
                        f"{want}",
                        read,
                    )
    return "", read


def check_metadata(targets: Sequence[Target]) -> CheckResult:
    """The raw gradients of the op's Python backward nodes against their inputs' dtype, shape, device."""
    read = 0
    for s, target in enumerate(targets):
        leaves, outs = _live(target)
        live = [out for out in outs if out.requires_grad]
        if not live:
            continue
        generator = torch.Generator().manual_seed(2000 + s)
        cotangents = [torch.randn(out.shape, dtype=out.dtype, generator=generator).to(out.device) for out in live]
        raw = _RawGradients(_python_nodes(live))
        error = None
        with raw:
            try:
                torch.autograd.grad(live, leaves, cotangents, allow_unused=True)
            except Exception as exc:
                error = exc
        problem, count = _metadata_problem(target, leaves, raw)
        read += count
        if problem:
            return CheckResult("grad metadata", "failed", f"sample {s}: {problem}")
        if error is not None:
            return CheckResult(
                "grad metadata", "skipped", f"sample {s}: the backward raised before its gradients could be read"
            )
    if not read:
        return CheckResult(
            "grad metadata",
            "unsupported",
            "no Python backward (autograd.Function, custom_op) feeds the inputs: torch's own ops",
        )
    return CheckResult("grad metadata", "passed", f"{read} gradient(s) read as the backward returned them")


def _vjp(outs: list[torch.Tensor], leaves: list[torch.Tensor], cotangents: list[torch.Tensor]) -> list[torch.Tensor]:
    pairs = [(out, cot) for out, cot in zip(outs, cotangents, strict=True) if out.requires_grad]
    if not pairs:
        return [torch.zeros_like(leaf) for leaf in leaves]
    grads = torch.autograd.grad(
        [o for o, _ in pairs], leaves, [c for _, c in pairs], retain_graph=True, allow_unused=True
    )
    return [g.detach() if g is not None else torch.zeros_like(leaf) for g, leaf in zip(grads, leaves, strict=True)]


def check_linearity_and_reentrancy(
    targets: Sequence[Target], atol: float, rtol: float, nondet_tol: float
) -> tuple[CheckResult, CheckResult]:
    """Backwards on random non-unit cotangents: linear in them, zero for zero, and the same twice."""
    linear = CheckResult("linearity", "passed")
    reentrant = CheckResult("reentrant", "passed")
    for s, target in enumerate(targets):
        leaves, outs = _live(target)
        generator = torch.Generator().manual_seed(3000 + s)
        u, w = (
            [torch.randn(o.shape, dtype=o.dtype, generator=generator).to(o.device).mul_(1.7) for o in outs]
            for _ in range(2)
        )
        a, b = 0.625, -1.875  # a + b != 1: a backward that ignores its gradient breaks the sum
        g_u, g_w = _vjp(outs, leaves, u), _vjp(outs, leaves, w)
        g_sum = _vjp(outs, leaves, [a * x + b * y for x, y in zip(u, w, strict=True)])
        g_zero = _vjp(outs, leaves, [torch.zeros_like(o) for o in outs])
        g_again = _vjp(outs, leaves, u)
        for i in range(len(leaves)):
            name = target.input_name(i)
            expected = a * g_u[i] + b * g_w[i]
            error = (g_sum[i] - expected).abs()
            if linear.status == "passed" and bool((error > atol + rtol * expected.abs()).any()):
                linear = CheckResult(
                    "linearity",
                    "failed",
                    f"sample {s} input {name}: vjp(a*u + b*w) differs from a*vjp(u) + b*vjp(w) by up to "
                    f"{float(error.max()):.3g}: the backward does not scale with the incoming gradient",
                    max_abs_error=float(error.max()),
                )
            if linear.status == "passed" and bool((g_zero[i].abs() > atol).any()):
                linear = CheckResult(
                    "linearity",
                    "failed",
                    f"sample {s} input {name}: a zero incoming gradient gives a gradient of up to "
                    f"{float(g_zero[i].abs().max()):.3g}, not 0",
                )
            drift = float((g_again[i] - g_u[i]).abs().max()) if g_u[i].numel() else 0.0
            if reentrant.status == "passed" and drift > nondet_tol:
                reentrant = CheckResult(
                    "reentrant",
                    "failed",
                    f"sample {s} input {name}: the backward run twice on the same graph differs by up to {drift:.3g} "
                    f"(nondet_tol {nondet_tol:g}): it is not deterministic",
                    max_abs_error=drift,
                )
    return linear, reentrant
