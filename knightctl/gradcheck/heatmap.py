"""A PNG per failing op: the analytic Jacobian, the numeric one, and their difference, side by side.

Drawn for the worst mismatch of the op's first failing Jacobian comparison (its sample, output and
input), so the pattern of the error shows: a wrong factor colours everything, a wrong branch half.
Colours are centred on zero, so a sign error flips the colour and a right entry's difference is white.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from knightctl.gradcheck.derivatives import live_copy
from knightctl.gradcheck.jacobian import Target, analytic_jacobian, numeric_chunks
from knightctl.gradcheck.report import OpReport

_MAX_CELLS = 250_000  # a 500 x 500 block is as much as a picture can show


def write_heatmap(report: OpReport, targets: list[Target], directory: Path) -> Path | None:
    """Write `<op>.png` (`<op>_<options>.png` at options) for the first failed first-order comparison
    with a located element, or None."""
    failed = next(
        (c for c in report.checks if c.status == "failed" and c.check == "reverse" and c.worst and c.worst.output >= 0),
        None,
    )
    if failed is None or failed.worst is None:
        return None
    worst = failed.worst
    live, xs = live_copy(targets[worst.sample])
    outs = live.call({})
    if outs[worst.output].numel() * xs[worst.input].numel() > _MAX_CELLS:
        return None
    analytic = analytic_jacobian([outs[worst.output]], [xs[worst.input]])[0][0].T  # rows: output elements
    numeric = torch.cat([chunk.central[worst.output] for chunk in numeric_chunks(live, outs, worst.input)]).T
    return _draw(report.label, analytic, numeric, worst.sample, worst.output, worst.input, directory)


def _draw(
    name: str,
    analytic: torch.Tensor,
    numeric: torch.Tensor,
    sample: int,
    output: int,
    input_index: int,
    directory: Path,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    # Every panel is centred on zero (a diverging map, symmetric limits), so a sign error reads as
    # a colour flip and zero as white; analytic and numeric share their limits to compare by eye.
    difference = analytic - numeric
    shared = _limit(analytic, numeric)
    panels = [
        ("analytic", analytic, shared, "d output / d input"),
        ("numeric", numeric, shared, "d output / d input"),
        ("analytic - numeric", difference, _limit(difference), "analytic - numeric"),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4), constrained_layout=True)
    for axis, (title, values, limit, label) in zip(axes, panels, strict=True):
        image = axis.imshow(values.cpu().numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        axis.set_title(title)
        axis.set_xlabel(f"input {input_index} element")
        axis.set_ylabel(f"output {output} element")
        figure.colorbar(image, ax=axis, label=label)
    figure.suptitle(f"{name}: Jacobian of sample {sample}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{_file_stem(name)}.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _limit(*values: torch.Tensor) -> float:
    """The largest finite magnitude among `values`: the colour scale runs from minus it to it (1 if none)."""
    magnitudes = [v.abs()[torch.isfinite(v)] for v in values]
    largest = max((float(m.max()) for m in magnitudes if m.numel()), default=0.0)
    return largest if largest > 0 else 1.0  # all zero: any symmetric scale shows it


def _file_stem(label: str) -> str:
    """`gc::op` -> `gc__op`; `gc::op {alpha: 2.5}` -> `gc__op_alpha_2.5`: one file per option set."""
    name, _, options = label.partition(" {")
    stem = name.replace("::", "__").replace(" ", "_")
    return stem + "_" + re.sub(r"[^\w.\-]+", "_", options).strip("_") if options else stem
