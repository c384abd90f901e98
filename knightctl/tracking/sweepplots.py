"""A sweep's plot: each finished trial's best value of the ranking metric against the value it gave
each swept path, one panel per path, the best trial marked with a star.

Built as tracking/plots.py builds a run's figures: a `Figure` on an Agg canvas, never pyplot, with
matplotlib imported only when a figure is drawn. Numeric values are placed by value, on a log axis
when they are drawn from loguniform or are positive and span more than two decades (learning
rates, weight decays); anything else (`full`, `relu`) is a category, in the order the sweep gives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from knightctl.sweep.ranking import SweepResult, TrialResult
    from knightctl.sweep.space import Axis

SWEEP_PLOT_ARTIFACT = "plots/sweep.png"

_LOG_SPAN = 100.0  # max/min above this (two decades) puts positive values on a log axis
_PANEL_INCHES = (5.0, 4.0)  # width and height of one panel


def sweep_figure(outcome: SweepResult) -> Figure | None:
    """One panel per swept path of `outcome`: best metric against the path's value, the best trial
    starred. None when no trial has a value to show, or nothing was swept."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scored = outcome.scored()
    if not scored or not outcome.axes:
        return None
    width, height = _PANEL_INCHES
    figure = Figure(figsize=(width * len(outcome.axes), height), layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, len(outcome.axes), squeeze=False)[0]
    for ax, axis in zip(panels, outcome.axes, strict=True):
        _panel(ax, axis, scored, outcome.metric)
    figure.suptitle(f"{outcome.spec_name} sweep: best {outcome.metric} of each trial ({outcome.goal})")
    return figure


def _panel(ax: Axes, axis: Axis, scored: Sequence[TrialResult], metric: str) -> None:
    """`scored` (best first) against `axis`'s values; the first is starred."""
    texts = [result.trial.values.get(axis.path, "") for result in scored]
    values = [float(result.value) for result in scored if result.value is not None]
    numbers = _numbers(texts)
    if numbers is None:
        names = list(dict.fromkeys([*axis.values, *texts]))  # every value the sweep gives, in its order
        xs = [float(names.index(text)) for text in texts]
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.5, len(names) - 0.5)
    else:
        xs = numbers
        if min(xs) > 0 and (axis.logarithmic or max(xs) / min(xs) > _LOG_SPAN):
            ax.set_xscale("log")
    ax.scatter(xs, values, s=30, color="tab:blue", alpha=0.8, label="trial")
    best = scored[0]
    ax.scatter(
        xs[:1],
        values[:1],
        marker="*",
        s=240,
        color="tab:red",
        edgecolors="black",
        linewidths=0.6,
        zorder=3,
        label=f"best: {best.trial.label} ({values[0]:.4g})",
    )
    # A loss that falls by orders of magnitude between trials would sit flat on a linear axis.
    if min(values) > 0 and max(values) / min(values) > _LOG_SPAN:
        ax.set_yscale("log")
    ax.set(xlabel=axis.path, ylabel=f"best {metric}", title=axis.path)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")


def _numbers(texts: Sequence[str]) -> list[float] | None:
    """The values as finite numbers, or None if any is not one."""
    try:
        numbers = [float(text) for text in texts]
    except ValueError:
        return None
    return numbers if all(math.isfinite(number) for number in numbers) else None
