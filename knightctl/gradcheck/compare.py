"""Element-by-element judgement of analytic derivatives against finite differences, kinks included.

An entry passes when |analytic - central| <= atol + rtol * |central|. Where the left and right
one-sided differences disagree by far more than that (a kink: relu at 0), the point is not
differentiable: the entry also passes if it matches either one-sided derivative or lies between
them (a subgradient), and the element is reported as a kink. Elsewhere the rule never applies, so
a wrong gradient cannot hide behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from knightctl.gradcheck.jacobian import unravel
from knightctl.gradcheck.report import Kink, Mismatch

_KINK_FACTOR = 100.0  # one-sided differences this many tolerances apart mean a kink; smooth ones differ by ~eps * f''


@dataclass
class Tally:
    """The running result of one check: errors, failing elements, the worst one, and kinks."""

    atol: float
    rtol: float
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    failed: int = 0
    worst: Mismatch | None = None
    worst_ratio: float = 0.0
    kinks: dict[tuple[int, int, tuple[int, ...]], Kink] = field(default_factory=dict)

    def judge(
        self,
        analytic: torch.Tensor,
        central: torch.Tensor,
        left: torch.Tensor,
        right: torch.Tensor,
        tolerance: torch.Tensor | None,
        *,
        where: tuple[int, int, int],
        rows: Sequence[int] | None,
        columns: torch.Tensor,
        shapes: tuple[Sequence[int], Sequence[int]],
    ) -> None:
        """Judge a block: rows are output elements (None: projections), columns input elements."""
        tol = self.atol + self.rtol * central.abs() if tolerance is None else tolerance
        error = (analytic - central).abs()
        kink = (left - right).abs() > _KINK_FACTOR * tol
        between = (analytic >= torch.minimum(left, right) - tol) & (analytic <= torch.maximum(left, right) + tol)
        one_sided = ((analytic - left).abs() <= tol) | ((analytic - right).abs() <= tol) | between
        bad = (error > tol) & ~(kink & one_sided)
        smooth = ~kink
        if smooth.any():
            self.max_abs_error = max(self.max_abs_error, float(error[smooth].max()))
            relative = error[smooth] / central[smooth].abs().clamp_min(1e-12)
            self.max_rel_error = max(self.max_rel_error, float(relative.max()))
        self._note_kinks(kink, left, right, where, columns, shapes[1])
        if not bad.any():
            return
        self.failed += int(bad.sum())
        ratio = torch.where(bad, error / tol.clamp_min(1e-300), torch.zeros_like(error))
        flat = int(ratio.argmax())
        if float(ratio.reshape(-1)[flat]) > self.worst_ratio:
            self.worst_ratio = float(ratio.reshape(-1)[flat])
            r, c = divmod(flat, ratio.shape[1])
            output_element = unravel(rows[r], shapes[0]) if rows is not None else ()
            self.worst = self._mismatch(where, output_element, unravel(int(columns[c]), shapes[1]), float(analytic[r, c]), float(central[r, c]))

    def _mismatch(self, where: tuple[int, int, int], output_element: tuple[int, ...], input_element: tuple[int, ...], analytic: float, numeric: float) -> Mismatch:
        sample, output, input_index = where
        error = abs(analytic - numeric)
        return Mismatch(sample, output, input_index, output_element, input_element, analytic, numeric, error, error / max(abs(numeric), 1e-12), self.atol, self.rtol)

    def _note_kinks(self, kink: torch.Tensor, left: torch.Tensor, right: torch.Tensor, where: tuple[int, int, int], columns: torch.Tensor, shape: Sequence[int]) -> None:
        if not kink.any():
            return
        sample, _, input_index = where
        for r, c in kink.nonzero().tolist():
            element = unravel(int(columns[c]), shape)
            self.kinks.setdefault((sample, input_index, element), Kink(sample, input_index, element, float(left[r, c]), float(right[r, c])))

    def finished_worst(self) -> Mismatch | None:
        if self.worst is None:
            return None
        return Mismatch(**{**self.worst.__dict__, "elements_failed": self.failed})
