"""The run's figures, drawn for real from hand-made histories and small trained models, then inspected."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from torch import nn

from knightctl.tracking.plots import (
    BOUNDARY_ARTIFACT,
    CURVES_ARTIFACT,
    decision_boundary,
    decision_grid,
    run_plots,
    save_png,
    training_curves,
)
from knightctl.training.data import Split

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

FULL_HISTORY = [
    (10, {"train/loss": 0.60, "train/lr": 0.1}),
    (20, {"train/loss": 0.40, "train/lr": 0.1}),
    (25, {"train/grad_norm": 0.3, "val/loss": 0.45, "val/accuracy": 0.80}),
    (25, {"epoch": 25.0, "train/samples_per_s": 1e6}),
    (30, {"train/loss": 0.30, "train/lr": 0.1}),
    (40, {"train/loss": 0.20, "train/lr": 0.1}),
    (50, {"train/grad_norm": 0.1, "val/loss": 0.25, "val/accuracy": 0.92}),
    (50, {"epoch": 50.0, "train/samples_per_s": 1e6}),
]


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [text.get_text() for text in legend.get_texts()]


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module, steps: int) -> nn.Module:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def binary() -> tuple[nn.Module, Split]:
    """The chapter's model shape, trained on a diagonal boundary: victory where east + north > 0."""
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(1))
    y = (x.sum(dim=1) > 0).float().reshape(-1, 1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1))
    model = _train(net, x[:240], y[:240], nn.BCEWithLogitsLoss(), 150)
    return model, Split(x[:240], y[:240], x[240:], y[240:], ("east", "north"), ("defeat", "victory"))


@pytest.fixture(scope="module")
def three_classes() -> tuple[nn.Module, Split]:
    """Three vertical bands: class 0 left of east = -0.5, class 2 right of east = 0.5, class 1 between."""
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(2))
    y = (x[:, 0] > -0.5).long() + (x[:, 0] > 0.5).long()
    torch.manual_seed(0)
    model = _train(nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3)), x, y, nn.CrossEntropyLoss(), 200)
    return model, Split(x, y, None, None, ("east", "north"), None)


class Diagonal(nn.Module):
    """No parameters at all: a binary logit that is positive where x > y."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] - x[:, 1:]


class CountingDiagonal(Diagonal):
    def __init__(self) -> None:
        super().__init__()
        self.batch_rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_rows.append(int(x.shape[0]))
        return super().forward(x)


# ---- training curves ----


def test_curves_show_losses_and_accuracy_side_by_side() -> None:
    figure = training_curves(FULL_HISTORY)
    assert figure is not None and len(figure.axes) == 2
    loss_ax, accuracy_ax = figure.axes
    assert len(loss_ax.get_lines()) == 2 and len(accuracy_ax.get_lines()) == 1
    assert [t.split(" ")[0] for t in _legend_texts(loss_ax)] == ["train/loss", "val/loss"]
    assert _legend_texts(accuracy_ax) == ["val/accuracy (last 0.92)"]
    assert loss_ax.get_xlabel() == accuracy_ax.get_xlabel() == "step"
    assert (loss_ax.get_ylabel(), accuracy_ax.get_ylabel()) == ("loss", "accuracy")
    assert figure.get_suptitle() == "Training curves"
    train_line, val_line = loss_ax.get_lines()
    assert list(train_line.get_xdata()) == [10, 20, 30, 40] and list(train_line.get_ydata()) == [0.6, 0.4, 0.3, 0.2]
    assert list(val_line.get_xdata()) == [25, 50] and list(val_line.get_ydata()) == [0.45, 0.25]
    assert loss_ax.get_yscale() == "linear"


def test_curves_without_validation_have_one_panel_and_one_line() -> None:
    history = [(step, values) for step, values in FULL_HISTORY if "train/loss" in values]
    figure = training_curves(history)
    assert figure is not None and len(figure.axes) == 1
    assert len(figure.axes[0].get_lines()) == 1
    assert _legend_texts(figure.axes[0]) == ["train/loss (last 0.2)"]


def test_a_single_evaluation_is_drawn_with_a_marker_so_it_shows() -> None:
    figure = training_curves([(5, {"val/loss": 0.5, "val/accuracy": 0.7})])
    assert figure is not None and len(figure.axes) == 2
    assert all(line.get_marker() == "o" for ax in figure.axes for line in ax.get_lines())


def test_a_loss_falling_by_orders_of_magnitude_gets_a_log_axis() -> None:
    history = [(step, {"train/loss": 10.0 ** -(step / 10)}) for step in range(1, 50)]
    figure = training_curves(history, title="regression")
    assert figure is not None and figure.axes[0].get_yscale() == "log"
    assert figure.get_suptitle() == "regression"


@pytest.mark.parametrize("history", [[], [(10, {"train/lr": 0.1, "epoch": 1.0})]], ids=["empty", "no-loss"])
def test_curves_are_none_when_nothing_is_plottable(history) -> None:
    assert training_curves(history) is None


# ---- decision grid ----


def test_grid_classes_are_the_models_own_predictions(binary) -> None:
    model, _ = binary
    grid = decision_grid(model, (-3.0, 3.0), (-2.0, 2.0), target="binary")
    assert grid.xx.shape == grid.yy.shape == grid.classes.shape == grid.logits.shape == (200, 200)
    assert (grid.xx[0, 0], grid.xx[0, -1], grid.yy[0, 0], grid.yy[-1, 0]) == (-3.0, 3.0, -2.0, 2.0)
    rows, columns = np.random.default_rng(0).integers(0, 200, size=(2, 50))
    points = torch.tensor(np.stack([grid.xx[rows, columns], grid.yy[rows, columns]], axis=1), dtype=torch.float32)
    with torch.no_grad():
        logits = model(points).reshape(-1)
    assert np.array_equal(grid.classes[rows, columns], (logits > 0).long().numpy())
    assert np.allclose(grid.logits[rows, columns], logits.numpy(), atol=1e-5)
    # The known boundary, east + north = 0: one side is defeat, the other victory.
    assert grid.classes[0, 0] == 0 and grid.classes[-1, -1] == 1


def test_grid_for_three_classes_is_the_argmax(three_classes) -> None:
    model, _ = three_classes
    grid = decision_grid(model, (-2.0, 2.0), (-2.0, 2.0), target="class", resolution=50)
    assert grid.logits is None and grid.n_classes == 3 and grid.classes.shape == (50, 50)
    points = torch.tensor(np.stack([grid.xx.ravel(), grid.yy.ravel()], axis=1), dtype=torch.float32)
    with torch.no_grad():
        expected = model(points).argmax(dim=1).reshape(50, 50).numpy()
    assert np.array_equal(grid.classes, expected)
    middle = 25
    assert (grid.classes[middle, 0], grid.classes[middle, middle], grid.classes[middle, -1]) == (0, 1, 2)


def test_a_model_without_parameters_is_evaluated_on_the_cpu() -> None:
    grid = decision_grid(Diagonal(), (-1.0, 1.0), (-1.0, 1.0), target="binary", resolution=21)
    off_diagonal = grid.xx != grid.yy
    assert np.array_equal(grid.classes[off_diagonal], (grid.xx > grid.yy)[off_diagonal])


def test_the_grid_follows_the_device_and_dtype_of_the_first_parameter(binary) -> None:
    model, _ = binary
    double = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1)).double()
    double.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    device = next(double.parameters()).device
    assert device.type == "cpu"
    grid = decision_grid(double, (-3.0, 3.0), (-3.0, 3.0), target="binary", resolution=30)
    assert np.array_equal(
        grid.classes, decision_grid(model, (-3.0, 3.0), (-3.0, 3.0), target="binary", resolution=30).classes
    )


@pytest.mark.cuda
def test_a_model_and_data_on_cuda_draw_a_boundary(binary) -> None:
    model, split = binary
    on_gpu = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1)).cuda()
    on_gpu.load_state_dict(model.state_dict())
    x, y = split.train_x.cuda(), split.train_y.cuda()
    figure = decision_boundary(
        on_gpu,
        x,
        y,
        val_x=split.val_x.cuda(),
        val_y=split.val_y.cuda(),
        feature_names=split.feature_names,
        class_names=split.class_names,
        target="binary",
    )
    assert figure is not None and len(figure.axes) == 1
    gpu_grid = decision_grid(on_gpu, (-3.0, 3.0), (-3.0, 3.0), target="binary", resolution=40)
    cpu_grid = decision_grid(model, (-3.0, 3.0), (-3.0, 3.0), target="binary", resolution=40)
    assert (gpu_grid.classes != cpu_grid.classes).mean() < 0.01  # float differences only at the boundary


def test_the_grid_is_one_forward_pass_and_an_oversized_grid_is_cut_into_bounded_slabs() -> None:
    model = CountingDiagonal()
    decision_grid(model, (0.0, 1.0), (0.0, 1.0), target="binary")
    assert model.batch_rows == [200 * 200]
    model.batch_rows.clear()
    grid = decision_grid(model, (0.0, 1.0), (0.0, 1.0), target="binary", resolution=5000)
    assert grid.classes.shape == (1000, 1000)  # resolution is capped
    assert sum(model.batch_rows) == 1000 * 1000 and max(model.batch_rows) <= 1 << 16


def test_the_grid_uses_eval_mode_and_restores_the_models_mode() -> None:
    model = nn.Sequential(nn.Dropout(p=0.9), Diagonal()).train()
    grid = decision_grid(model, (-1.0, 1.0), (-1.0, 1.0), target="binary", resolution=21)
    assert model.training
    off_diagonal = grid.xx != grid.yy
    assert np.array_equal(grid.classes[off_diagonal], (grid.xx > grid.yy)[off_diagonal])


def test_a_regression_target_has_no_grid() -> None:
    with pytest.raises(ValueError, match="binary or class"):
        decision_grid(Diagonal(), (0.0, 1.0), (0.0, 1.0), target="real")


def test_outputs_of_the_wrong_shape_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"shape \(100, 2\) for 100 points; expected \(N, 1\) logits"):
        decision_grid(nn.Identity(), (0.0, 1.0), (0.0, 1.0), target="binary", resolution=10)


# ---- decision boundary figure ----


def test_binary_boundary_has_labels_legend_and_every_point(binary) -> None:
    model, split = binary
    figure = decision_boundary(
        model,
        split.train_x,
        split.train_y,
        val_x=split.val_x,
        val_y=split.val_y,
        feature_names=split.feature_names,
        class_names=split.class_names,
        target="binary",
    )
    assert figure is not None and len(figure.axes) == 1
    (ax,) = figure.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("east", "north")
    assert _legend_texts(ax) == [
        "defeat (train)",
        "victory (train)",
        "defeat (validation)",
        "victory (validation)",
        "P(victory) = 0.5",
    ]
    scattered = sum(
        len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets") and c.get_label().endswith(")")
    )
    assert scattered == 300
    everything = torch.cat([split.train_x, split.val_x])
    low, high = float(everything[:, 0].min()), float(everything[:, 0].max())
    assert ax.get_xlim() == pytest.approx((low - 0.05 * (high - low), high + 0.05 * (high - low)))


def test_three_class_boundary_names_classes_when_none_are_given(three_classes) -> None:
    model, split = three_classes
    figure = decision_boundary(
        model, split.train_x, split.train_y, feature_names=("a", "b"), class_names=None, target="class"
    )
    assert figure is not None
    assert _legend_texts(figure.axes[0]) == ["class 0 (train)", "class 1 (train)", "class 2 (train)"]
    named = decision_boundary(
        model, split.train_x, split.train_y, feature_names=("a", "b"), class_names=("L", "M", "R"), target="class"
    )
    assert _legend_texts(named.axes[0]) == ["L (train)", "M (train)", "R (train)"]


def test_a_parameterless_model_draws_a_boundary() -> None:
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.2]])
    y = torch.tensor([[0.0], [1.0], [1.0]])
    figure = decision_boundary(Diagonal(), x, y, feature_names=("x", "y"), class_names=None, target="binary")
    assert figure is not None
    assert _legend_texts(figure.axes[0]) == ["class 0 (train)", "class 1 (train)", "P(class 1) = 0.5"]


def test_no_boundary_for_regression_or_three_features(binary) -> None:
    model, split = binary
    names = split.feature_names
    assert (
        decision_boundary(model, split.train_x, split.train_y, feature_names=names, class_names=None, target="real")
        is None
    )
    wide = torch.randn(10, 3)
    three = nn.Linear(3, 1)
    zeros = torch.zeros(10, 1)
    assert (
        decision_boundary(three, wide, zeros, feature_names=("a", "b", "c"), class_names=None, target="binary") is None
    )


# ---- saving and the run's set ----


def test_save_png_writes_a_png_of_the_figures_size(tmp_path) -> None:
    figure = training_curves(FULL_HISTORY)
    path = tmp_path / "nested" / "curves.png"
    save_png(figure, path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    width, height = figure.get_size_inches() * 120
    assert imread(path).shape == (round(height), round(width), 4)
    save_png(figure, str(tmp_path / "again.png"))  # the figure is still usable after saving
    assert (tmp_path / "again.png").read_bytes()[:8] == PNG_MAGIC


def test_run_plots_names_the_artifacts_and_leaves_out_what_does_not_apply(binary) -> None:
    model, split = binary
    assert set(run_plots(FULL_HISTORY, model, split, "binary")) == {CURVES_ARTIFACT, BOUNDARY_ARTIFACT}
    assert CURVES_ARTIFACT == "plots/training_curves.png" and BOUNDARY_ARTIFACT == "plots/decision_boundary.png"
    assert set(run_plots(FULL_HISTORY, model, split, "real")) == {CURVES_ARTIFACT}
    assert run_plots([], model, split, "real") == {}


def test_importing_is_cheap_and_the_curves_need_neither_torch_nor_pyplot(tmp_path) -> None:
    script = (
        "import sys, knightctl.tracking.plots as p\n"
        "assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules\n"
        "p.save_png(p.training_curves([(1, {'train/loss': 1.0})]), sys.argv[1])\n"
        "assert 'matplotlib.pyplot' not in sys.modules and 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "c.png")], check=True)


def test_drawing_a_boundary_does_not_load_pyplot(binary, tmp_path) -> None:
    model, split = binary
    before = set(sys.modules)
    figure = decision_boundary(
        model, split.train_x, split.train_y, feature_names=("a", "b"), class_names=None, target="binary"
    )
    save_png(figure, tmp_path / "boundary.png")
    assert "matplotlib.pyplot" not in set(sys.modules) - before
