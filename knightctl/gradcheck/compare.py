"""Element-by-element judgement of analytic derivatives against finite differences, kinks included.

An entry passes when |analytic - central| <= atol + rtol * |central|. Where the left and right
one-sided differences disagree by far more than that (a kink: relu at 0), the point is not
differentiable: the entry also passes if it matches either one-sided derivative or lies between
them (a subgradient), and the element is reported as a kink. Elsewhere the rule never applies, so
a wrong gradient cannot hide behind it.

Blocks are input-major, (input elements, output elements). Most entries of a Jacobian pass with
room to spare (an elementwise op's are nearly all exactly zero), so a block is screened first with
the loosest bounds (error <= atol passes; one-sided differences within 100 atol are no kink) and
only the entries that survive are judged in full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from knightctl.gradcheck.jacobian import NumericChunk, Target, unravel
from knightctl.gradcheck.report import Kink, Mismatch

_KINK_FACTOR = 100.0  # one-sided differences this many tolerances apart mean a kink; smooth ones differ by ~eps * f''


@dataclass
class Tally:
    """The running result of one check: errors, failing elements, the worst one, and kinks."""

    atol: float
    rtol: float
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0  # error / max(|numeric|, atol), over every entry away from kinks
    failed: int = 0
    worst: Mismatch | None = None
    worst_ratio: float = 0.0
    kinks: dict[tuple[int, int, tuple[int, ...]], Kink] = field(default_factory=dict)

    def judge_block(
        self,
        analytic: torch.Tensor,
        chunk: NumericChunk,
        j: int,
        *,
        where: tuple[int, int, int],
        shapes: tuple[Sequence[int], Sequence[int]],
    ) -> None:
        """Judge analytic (hi - lo, out_numel) against the chunk's differences for output j."""
        central = chunk.central[j]
        error = (analytic - central).abs_()
        spread = (chunk.up[j] + chunk.down[j]).sub_(2 * chunk.mid[j]).abs_()  # eps * |right - left|
        kinkish = spread > _KINK_FACTOR * self.atol * chunk.eps
        smooth_error = error.masked_fill(kinkish, 0.0) if bool(kinkish.any()) else error
        if smooth_error.numel():
            self.max_abs_error = max(self.max_abs_error, float(smooth_error.max()))
            relative = central.abs().clamp_min_(self.atol)  # error / max(|numeric|, atol), every entry
            self.max_rel_error = max(self.max_rel_error, float(torch.div(smooth_error, relative, out=relative).max()))
        rows, columns = ((error > self.atol) | kinkish).nonzero().unbind(1)
        if len(rows):
            left = (chunk.mid[j][0, columns] - chunk.down[j][rows, columns]) / chunk.eps
            right = (chunk.up[j][rows, columns] - chunk.mid[j][0, columns]) / chunk.eps
            values = (analytic[rows, columns], central[rows, columns], left, right)
            self._judge_entries(*values, None, where=where, inputs=chunk.elements[rows], outputs=columns, shapes=shapes)

    def judge_projections(
        self,
        analytic: torch.Tensor,
        central: torch.Tensor,
        left: torch.Tensor,
        right: torch.Tensor,
        tolerance: torch.Tensor,
        *,
        where: tuple[int, int, int],
        elements: torch.Tensor,
        in_shape: Sequence[int],
    ) -> None:
        """Judge projections u^T J, (input elements, probes), each against its own tolerance."""
        error = (analytic - central).abs()
        if error.numel():
            self.max_abs_error = max(self.max_abs_error, float(error.max()))
            self.max_rel_error = max(self.max_rel_error, float((error / central.abs().clamp_min(self.atol)).max()))
        rows, columns = torch.ones_like(error, dtype=torch.bool).nonzero().unbind(1)
        flat = (analytic.reshape(-1), central.reshape(-1), left.reshape(-1), right.reshape(-1), tolerance.reshape(-1))
        self._judge_entries(*flat, where=where, inputs=elements[rows], outputs=None, shapes=((), in_shape))

    def _judge_entries(
        self,
        analytic: torch.Tensor,
        central: torch.Tensor,
        left: torch.Tensor,
        right: torch.Tensor,
        tolerance: torch.Tensor | None,
        *,
        where: tuple[int, int, int],
        inputs: torch.Tensor,
        outputs: torch.Tensor | None,
        shapes: tuple[Sequence[int], Sequence[int]],
    ) -> None:
        """The full rule on 1-D vectors of entries; `outputs` None means the entries are projections."""
        tol = self.atol + self.rtol * central.abs() if tolerance is None else tolerance
        error = (analytic - central).abs()
        kink = (left - right).abs() > _KINK_FACTOR * tol
        between = (analytic >= torch.minimum(left, right) - tol) & (analytic <= torch.maximum(left, right) + tol)
        one_sided = ((analytic - left).abs() <= tol) | ((analytic - right).abs() <= tol) | between
        bad = (error > tol) & ~(kink & one_sided)
        sample, _, input_index = where
        for k in kink.nonzero().flatten().tolist():
            element = unravel(int(inputs[k]), shapes[1])
            self.kinks.setdefault(
                (sample, input_index, element), Kink(sample, input_index, element, float(left[k]), float(right[k]))
            )
        if not bool(bad.any()):
            return
        self.failed += (
            int(bad.sum()) if outputs is not None else len(set(inputs[bad].tolist()))
        )  # projections: count elements
        ratio = torch.where(bad, error / tol.clamp_min(1e-300), torch.zeros_like(error))
        k = int(ratio.argmax())
        if float(ratio[k]) > self.worst_ratio:
            self.worst_ratio = float(ratio[k])
            output_element = unravel(int(outputs[k]), shapes[0]) if outputs is not None else ()
            self.worst = self._mismatch(
                where, output_element, unravel(int(inputs[k]), shapes[1]), float(analytic[k]), float(central[k])
            )

    def _mismatch(
        self,
        where: tuple[int, int, int],
        output_element: tuple[int, ...],
        input_element: tuple[int, ...],
        analytic: float,
        numeric: float,
    ) -> Mismatch:
        sample, output, input_index = where
        error = abs(analytic - numeric)
        return Mismatch(
            sample,
            output,
            input_index,
            output_element,
            input_element,
            analytic,
            numeric,
            error,
            error / max(abs(numeric), self.atol),
            self.atol,
            self.rtol,
        )

    def finished_worst(self, targets: Sequence[Target] = ()) -> Mismatch | None:
        """The worst mismatch, with how many failed, its input's name and the inputs' values there."""
        if self.worst is None:
            return None
        worst = replace(self.worst, elements_failed=self.failed)
        if worst.sample >= len(targets):
            return worst
        target = targets[worst.sample]
        inputs = [target.args[p] for p in target.wrt]
        x = inputs[worst.input]
        values = (
            [(target.input_name(worst.input), float(x.detach()[worst.input_element]))]
            if worst.input_element or x.dim() == 0
            else []
        )
        for i, other in enumerate(inputs):  # same-shaped inputs at the same element: y beside x in f(x, y)
            if i != worst.input and other.shape == x.shape and values:
                values.append((target.input_name(i), float(other.detach()[worst.input_element])))
        return replace(worst, input_name=target.input_name(worst.input), input_values=tuple(values))
