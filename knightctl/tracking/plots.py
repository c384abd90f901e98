"""The figures a training run logs to MLflow: its learning curves and, for two-feature classifiers,
its decision boundary.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas, never through pyplot: no global
figure registry to leak into, nothing to close, and safe to use from any thread. matplotlib and torch
are imported inside the functions, so importing this module costs nothing until a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from knightctl.training.data import Split

History = Sequence[tuple[int, dict[str, float]]]

CURVES_ARTIFACT = "plots/training_curves.png"
BOUNDARY_ARTIFACT = "plots/decision_boundary.png"

_DPI = 120
_GRID_SIDE = 200  # 40,000 grid points: smooth edges, a single small forward pass
_MAX_GRID_SIDE = 1000
_MAX_BATCH_ROWS = 1 << 16  # bounds the activations of one forward pass on the grid
_MARGIN = 0.05
_LOSS_KEYS = ("train/loss", "val/loss")
_ACCURACY_KEY = "val/accuracy"


@dataclass(frozen=True)
class DecisionGrid:
    """A model's predictions on a regular grid: `classes[i, j]` is the class at `(xx[i, j], yy[i, j])`.

    `logits` holds the binary logit at each grid point (None for multi-class), for the 0.5 contour;
    `n_classes` is 2 for a binary model, else the model's output width.
    """

    xx: np.ndarray
    yy: np.ndarray
    classes: np.ndarray
    logits: np.ndarray | None
    n_classes: int


def _new_figure(n_panels: int, width: float = 5.6, height: float = 4.2) -> tuple[Figure, list[Axes]]:
    """A figure with an Agg canvas and `n_panels` axes side by side, each `width` inches wide."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * n_panels, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, n_panels, squeeze=False)[0]
    return figure, list(axes)


def _series(history: History, key: str) -> tuple[list[int], list[float]]:
    steps = [step for step, values in history if key in values]
    return steps, [float(values[key]) for _, values in history if key in values]


def _plot_series(ax: Axes, steps: list[int], values: list[float], label: str, **style: Any) -> None:
    # Sparse series (evaluations every few epochs, or a single one) get markers: a lone point
    # drawn as a line would be invisible.
    marker = "o" if len(steps) < 60 else None
    ax.plot(steps, values, label=f"{label} (last {values[-1]:.4g})", marker=marker, markersize=3.5, **style)


def training_curves(history: History, *, title: str = "Training curves") -> Figure | None:
    """Loss against step (train/loss and val/loss) and, when logged, val/accuracy in a second panel.

    Returns None when `history` holds neither a loss nor an accuracy.
    """
    losses = {key: _series(history, key) for key in _LOSS_KEYS}
    losses = {key: series for key, series in losses.items() if series[0]}
    accuracy = _series(history, _ACCURACY_KEY)
    n_panels = bool(losses) + bool(accuracy[0])
    if not n_panels:
        return None
    figure, axes = _new_figure(n_panels)
    if losses:
        ax = axes[0]
        for key, (steps, values) in losses.items():
            _plot_series(ax, steps, values, key, color="tab:blue" if key == "train/loss" else "tab:orange")
        finite = [v for _, values in losses.values() for v in values if math.isfinite(v)]
        # Regression losses can fall by orders of magnitude; on a linear axis the whole tail of
        # training would sit flat on zero.
        if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="loss", title="Loss")
    if accuracy[0]:
        ax = axes[-1]
        _plot_series(ax, *accuracy, _ACCURACY_KEY, color="tab:green")
        ax.set(xlabel="step", ylabel="accuracy", title="Validation accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    figure.suptitle(title)
    return figure


def _model_placement(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model's weights live and their floating dtype; CPU float32 for a model without any."""
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def decision_grid(
    model: torch.nn.Module,
    x_limits: tuple[float, float],
    y_limits: tuple[float, float],
    *,
    target: str,
    resolution: int = _GRID_SIDE,
) -> DecisionGrid:
    """The class `model` predicts at each point of a `resolution`-square grid over the limits.

    `target` is "binary" (one logit, class 1 where it is positive) or "class" (argmax over outputs).
    The grid is evaluated batched, under no_grad, in eval mode; the model's mode is restored after.
    """
    import torch

    if target not in ("binary", "class"):
        raise ValueError(f"a decision grid needs a binary or class target, not {target!r}")
    side = max(2, min(int(resolution), _MAX_GRID_SIDE))
    device, dtype = _model_placement(model)
    xs = torch.linspace(*x_limits, side, dtype=torch.float64)
    ys = torch.linspace(*y_limits, side, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # rows follow y, columns follow x, as contourf wants
    points = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1).to(device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # One forward pass at the default size; only an oversized grid is cut into slabs.
            outputs = torch.cat([model(chunk) for chunk in points.split(_MAX_BATCH_ROWS)])
    finally:
        model.train(was_training)
    return _read_outputs(outputs, target, xx.numpy(), yy.numpy())


def _read_outputs(outputs: torch.Tensor, target: str, xx: np.ndarray, yy: np.ndarray) -> DecisionGrid:
    """Turn the model's outputs on the grid into classes (and binary logits), checking their shape."""
    n_points = xx.size
    if target == "binary" and outputs.numel() == n_points:
        logits = outputs.reshape(xx.shape).float().cpu()
        return DecisionGrid(xx, yy, (logits > 0).long().numpy(), logits.numpy(), 2)
    if target == "class" and outputs.ndim == 2 and outputs.shape[0] == n_points:
        return DecisionGrid(xx, yy, outputs.argmax(dim=-1).reshape(xx.shape).cpu().numpy(), None, int(outputs.shape[1]))
    expected = "(N, 1) logits" if target == "binary" else "(N, C) class scores"
    raise ValueError(
        f"the model returned outputs of shape {tuple(outputs.shape)} for {n_points} points; expected {expected}"
    )


def _limits(values: torch.Tensor) -> tuple[float, float]:
    """The range of `values` widened by the margin on each side (a unit span if it is a single value)."""
    low, high = float(values.min()), float(values.max())
    pad = (high - low) * _MARGIN or 0.5
    return low - pad, high + pad


def _true_classes(y: torch.Tensor, target: str) -> np.ndarray:
    y = y.detach().reshape(-1).cpu()
    return (y > 0.5).long().numpy() if target == "binary" else y.long().numpy()


def _class_colours(n_classes: int) -> list[Any]:
    from matplotlib import colormaps

    if n_classes <= 10:
        return list(colormaps["tab10"].colors[:n_classes])
    return [colormaps["turbo"](i / (n_classes - 1)) for i in range(n_classes)]


def _scatter_split(
    ax: Axes, x: torch.Tensor, y: torch.Tensor, target: str, names: Sequence[str], colours: list[Any], split: str
) -> None:
    """One scatter per class, labelled for the legend; validation points are triangles with a dark edge."""
    x = x.detach().cpu().numpy()
    classes = _true_classes(y, target)
    if split == "train":
        style: dict[str, Any] = dict(marker="o", s=12, edgecolors="white", linewidths=0.3)
    else:
        style = dict(marker="^", s=22, edgecolors="black", linewidths=0.5)
    for index, name in enumerate(names):
        mask = classes == index
        if mask.any():
            ax.scatter(x[mask, 0], x[mask, 1], color=colours[index], label=f"{name} ({split})", alpha=0.85, **style)


def _draw_regions(ax: Axes, grid: DecisionGrid, names: Sequence[str], colours: list[Any]) -> list[Any]:
    """Filled predicted-class regions and, for a binary model, its 0.5 line; returns legend handles to add."""
    from matplotlib.lines import Line2D

    levels = [i - 0.5 for i in range(len(names) + 1)]  # one band per class index
    ax.contourf(grid.xx, grid.yy, grid.classes, levels=levels, colors=colours, alpha=0.22)
    ax.set_xlim(grid.xx[0, 0], grid.xx[0, -1])
    ax.set_ylim(grid.yy[0, 0], grid.yy[-1, 0])
    # A model that predicts one class everywhere has no 0.5 line to draw.
    if grid.logits is None or not grid.logits.min() < 0 < grid.logits.max():
        return []
    ax.contour(grid.xx, grid.yy, grid.logits, levels=[0.0], colors="black", linewidths=1.2)
    return [Line2D([], [], color="black", linewidth=1.2, label=f"P({names[1]}) = 0.5")]


def decision_boundary(
    model: torch.nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    *,
    val_x: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    feature_names: Sequence[str],
    class_names: Sequence[str] | None,
    target: str,
) -> Figure | None:
    """Predicted class regions over two features, with the training and validation points on top.

    Returns None unless the data has exactly two features, at least one row, and `target` is
    "binary" or "class".
    """
    import torch

    if target not in ("binary", "class") or train_x.ndim != 2 or train_x.shape[1] != 2 or len(feature_names) != 2:
        return None
    everything = train_x if val_x is None else torch.cat([train_x, val_x.to(train_x.device)])
    if everything.shape[0] == 0:
        return None
    grid = decision_grid(model, _limits(everything[:, 0]), _limits(everything[:, 1]), target=target)
    n_classes = max(grid.n_classes, len(class_names or ()))
    names = [class_names[i] if class_names and i < len(class_names) else f"class {i}" for i in range(n_classes)]
    colours = _class_colours(n_classes)
    figure, (ax,) = _new_figure(1, width=7.6, height=5.4)  # room for the legend at the side
    extra = _draw_regions(ax, grid, names, colours)
    _scatter_split(ax, train_x, train_y, target, names, colours, "train")
    if val_x is not None and val_y is not None:
        _scatter_split(ax, val_x, val_y, target, names, colours, "validation")
    ax.set(xlabel=feature_names[0], ylabel=feature_names[1], title="Decision boundary (shading: predicted class)")
    handles, _ = ax.get_legend_handles_labels()
    # Outside the axes, so that the legend never hides points or the boundary.
    ax.legend(
        handles=[*handles, *extra], loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small"
    )
    return figure


def save_png(figure: Figure, path: str | Path) -> None:
    """Write `figure` as a PNG at `path` (parent folders created); the figure stays usable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=_DPI)


def run_plots(history: History, model: torch.nn.Module, split: Split, target: str) -> dict[str, Figure]:
    """The figures of one run keyed by artifact path, leaving out any that do not apply."""
    figures = {
        CURVES_ARTIFACT: training_curves(history),
        BOUNDARY_ARTIFACT: decision_boundary(
            model,
            split.train_x,
            split.train_y,
            val_x=split.val_x,
            val_y=split.val_y,
            feature_names=split.feature_names,
            class_names=split.class_names,
            target=target,
        ),
    }
    return {name: figure for name, figure in figures.items() if figure is not None}
