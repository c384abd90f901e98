"""Jacobians of `fn(*args)` with respect to some of its float64 tensor arguments, in batches.

Numeric: central differences, and the one-sided differences that come free with them (f(x) is
known), which expose kinks. Evaluations are batched with torch.vmap over the perturbations where
the function allows it, else looped. Analytic: reverse mode, vector-Jacobian products batched with
`is_grads_batched` (looped where the backward cannot be vmapped), or forward mode, one
Jacobian-vector product per element.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

EPS = 1e-6  # finite-difference step in float64: truncation ~eps^2, rounding ~1e-16/eps = 1e-10
_BATCH_ENTRIES = 2**22  # floats per batched evaluation (32 MiB of float64)


def as_outputs(value: Any) -> tuple[torch.Tensor, ...]:
    """The floating-point tensors an op returned, as a tuple."""
    values = value if isinstance(value, (tuple, list)) else (value,)
    return tuple(v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point())


@dataclass
class Target:
    """`fn(*args)` differentiated with respect to the tensors at positions `wrt`."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    wrt: tuple[int, ...]
    vmap_ok: bool = True  # cleared the first time vmap fails on this function
    vmap_error: str = field(default="", repr=False)

    def inputs(self) -> list[torch.Tensor]:
        return [self.args[i] for i in self.wrt]

    def call(self, replaced: dict[int, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return as_outputs(self.fn(*(replaced.get(i, a) for i, a in enumerate(self.args))))

    def call_batched(self, position: int, batch: torch.Tensor) -> list[torch.Tensor]:
        """Outputs for each row of `batch` in place of argument `position`, each (rows, *shape)."""
        if self.vmap_ok:
            try:
                return list(torch.vmap(lambda x: self.call({position: x}))(batch))
            except Exception as exc:  # no batching rule: fall back to a loop, and remember
                self.vmap_ok, self.vmap_error = False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        rows = [self.call({position: row}) for row in batch]
        return [torch.stack([row[j] for row in rows]) for j in range(len(rows[0]))]


@dataclass
class NumericColumns:
    """Finite-difference Jacobian columns for some elements of one input, per output: (out_numel, k)."""

    elements: torch.Tensor  # flat indices into the input
    central: list[torch.Tensor]
    left: list[torch.Tensor]
    right: list[torch.Tensor]


def numeric_columns(target: Target, base: Sequence[torch.Tensor], which: int, eps: float = EPS) -> list[NumericColumns]:
    """All columns of d outputs / d input `which`, in batches of perturbed copies of the input."""
    position = target.wrt[which]
    x = target.args[position].detach()
    n = x.numel()
    widest = max([n, *(out.numel() for out in base)])
    per_batch = max(1, _BATCH_ENTRIES // widest)
    chunks = []
    with torch.no_grad():
        for start in range(0, n, per_batch):
            elements = torch.arange(start, min(n, start + per_batch), device=x.device)
            rows = torch.arange(len(elements), device=x.device)
            shifted = x.reshape(1, n).repeat(len(elements), 1)
            plus, minus = shifted.clone(), shifted.clone()
            plus[rows, elements] += eps
            minus[rows, elements] -= eps
            up = target.call_batched(position, plus.reshape(len(elements), *x.shape))
            down = target.call_batched(position, minus.reshape(len(elements), *x.shape))
            central, left, right = [], [], []
            for j, f0 in enumerate(base):
                f_up, f_down = up[j].reshape(len(elements), -1).T, down[j].reshape(len(elements), -1).T
                f_mid = f0.detach().reshape(-1, 1)
                central.append((f_up - f_down) / (2 * eps))
                left.append((f_mid - f_down) / eps)
                right.append((f_up - f_mid) / eps)
            chunks.append(NumericColumns(elements, central, left, right))
    return chunks


def vjp(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor], cotangents: Sequence[torch.Tensor], *, batched: bool, create_graph: bool = False) -> list[torch.Tensor]:
    """Vector-Jacobian products; `batched` cotangents carry a leading batch dimension. None -> zeros."""
    pairs = [(out, cot) for out, cot in zip(outputs, cotangents) if out.requires_grad]
    if not pairs:  # nothing reaches the inputs: every derivative is zero
        shape = (cotangents[0].shape[0],) if batched else ()
        return [torch.zeros(*shape, *x.shape, dtype=x.dtype, device=x.device) for x in inputs]
    grads = torch.autograd.grad(
        [out for out, _ in pairs], list(inputs), [cot for _, cot in pairs],
        retain_graph=True, create_graph=create_graph, allow_unused=True, is_grads_batched=batched,
    )
    shape = (cotangents[0].shape[0],) if batched else ()
    return [g if g is not None else torch.zeros(*shape, *x.shape, dtype=x.dtype, device=x.device) for g, x in zip(grads, inputs)]


def batched_vjp(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor], cotangents: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], str]:
    """vjp over a batch of cotangents: one vmapped backward if it can be, else a loop (and why)."""
    try:
        return vjp(outputs, inputs, cotangents, batched=True), ""
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    rows = [vjp(outputs, inputs, [c[b] for c in cotangents], batched=False) for b in range(cotangents[0].shape[0])]
    return [torch.stack([row[i] for row in rows]) for i in range(len(inputs))], reason


def analytic_rows(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The whole reverse-mode Jacobian: [output j][input i] as a dense (out_numel, in_numel) matrix."""
    result = []
    for j, out in enumerate(outputs):
        m = out.numel()
        blocks: list[list[torch.Tensor]] = [[] for _ in inputs]
        per_batch = max(1, _BATCH_ENTRIES // max(m, *(x.numel() for x in inputs)))
        for start in range(0, m, per_batch):
            rows = torch.arange(start, min(m, start + per_batch), device=out.device)
            basis = torch.zeros(len(rows), m, dtype=out.dtype, device=out.device)
            basis[torch.arange(len(rows)), rows] = 1.0
            cotangents = [basis.reshape(len(rows), *out.shape) if k == j else torch.zeros(len(rows), *o.shape, dtype=o.dtype, device=o.device) for k, o in enumerate(outputs)]
            grads, _ = batched_vjp(outputs, inputs, cotangents)
            for i, g in enumerate(grads):
                blocks[i].append(g.reshape(len(rows), -1))
        result.append([torch.cat(block) for block in blocks])
    return result


def unravel(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    """Flat index -> multi-dimensional index."""
    index = []
    for size in reversed(shape):
        flat, rest = divmod(flat, size) if size else (flat, 0)
        index.append(rest)
    return tuple(reversed(index))
