"""What a gradient check found, as plain data: one `OpReport` per op, one `CheckResult` per check.

No torch here: reports are rendered by the CLI, written as JSON and logged to MLflow as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["passed", "failed", "unsupported", "skipped", "error"]
Verdict = Literal["passed", "failed", "n/a"]  # n/a: nothing differentiable was compared


@dataclass(frozen=True)
class Mismatch:
    """The worst element of a failed comparison, with everything needed to find and judge it."""

    sample: int  # which of the op's sample inputs
    output: int  # which output of the op (or of its derivative, for higher orders)
    input: int  # which differentiable input
    output_element: tuple[int, ...]
    input_element: tuple[int, ...]
    analytic: float
    numeric: float
    abs_error: float
    rel_error: float
    atol: float
    rtol: float
    elements_failed: int = 1  # how many elements of this comparison are out of tolerance
    input_name: str = ""  # where the input sits in the op's arguments: "args[1]", "kwargs['w'][0]"
    input_values: tuple[tuple[str, float], ...] = ()  # the inputs' values at the worst element


@dataclass(frozen=True)
class Kink:
    """An input element where the left and right derivatives disagree: not differentiable there."""

    sample: int
    input: int
    element: tuple[int, ...]
    left: float
    right: float


@dataclass
class CheckResult:
    """One check of one op over all its samples."""

    check: str  # "mutation", "grad metadata", "reference", "reverse", "linearity", ..., "batched", "opcheck"
    status: Status
    detail: str = ""
    method: str = ""  # "exact" (whole Jacobian) or "fast" (random projections), where it applies
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    worst: Mismatch | None = None
    seconds: float = 0.0


@dataclass
class OpReport:
    """Everything `knightctl gradcheck` found about one op (or a spec's model)."""

    name: str
    plugin: str
    device: str
    checks: list[CheckResult] = field(default_factory=list)
    kinks: list[Kink] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)  # keyword options every sample was called with

    @property
    def label(self) -> str:
        """The op's name, with the options it was checked at: `my::op {alpha: 2.5}`."""
        if not self.options:
            return self.name
        return f"{self.name} {{{', '.join(f'{key}: {value!r}' for key, value in self.options.items())}}}"

    @property
    def verdict(self) -> Verdict:
        """failed if any check failed or raised; passed if one compared something; else n/a."""
        if any(check.status in ("failed", "error") for check in self.checks):
            return "failed"
        return "passed" if any(check.status == "passed" for check in self.checks) else "n/a"

    @property
    def failures(self) -> list[CheckResult]:
        return [check for check in self.checks if check.status in ("failed", "error")]

    def check(self, name: str) -> CheckResult | None:
        return next((check for check in self.checks if check.check == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "label": self.label, **asdict(self)}

    def explain(self) -> list[str]:
        """What went wrong, in plain lines: the note, each failure with its worst element (indented
        lines beneath it), and the kinks. Empty for an op with nothing to tell."""
        lines = [f"{self.label}: {self.note}"] if self.note else []
        for check in self.failures:
            method = f" ({check.method})" if check.method else ""
            lines.append(f"{self.label}: {check.check} {check.status}{method}: {check.detail}")
            if check.worst is not None:
                lines.extend(_explain_worst(check.worst))
        if self.kinks:
            shown = "; ".join(
                f"sample {k.sample} input {k.input} element {k.element} (left {k.left:.4g}, right {k.right:.4g})"
                for k in self.kinks[:4]
            )
            more = f"; and {len(self.kinks) - 4} more" if len(self.kinks) > 4 else ""
            lines.append(
                f"{self.label}: {len(self.kinks)} non-differentiable point(s), judged by their one-sided derivatives: "
                f"{shown}{more}"
            )
        return lines


def _explain_worst(worst: Mismatch) -> list[str]:
    output = (
        f"output {worst.output} element {worst.output_element}"
        if worst.output >= 0
        else "a random projection of the outputs"
    )
    where = f" ({worst.input_name})" if worst.input_name else ""
    values = ", ".join(f"{place} = {value:.6g}" for place, value in worst.input_values)
    at = f", where {values}" if values else ""
    return [
        f"    worst: sample {worst.sample}, {output}, input {worst.input}{where} element {worst.input_element}{at}",
        f"    analytic {worst.analytic:.9g}  numeric {worst.numeric:.9g}  abs error {worst.abs_error:.3g}  rel error "
        f"{worst.rel_error:.3g}"
        f"  (tolerance {worst.atol:g} + {worst.rtol:g} * |numeric|)",
    ]
