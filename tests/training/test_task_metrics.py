"""Task metrics: each built-in's numbers against values worked out by hand on tiny tensors, ROC AUC
with ties, plugin metrics (logged, monitored, and refused when they misbehave), and regression runs."""

from __future__ import annotations

import itertools
import math
import textwrap
from pathlib import Path

import pytest
import torch

from knightctl.errors import PluginError
from knightctl.plugins.builtin import metricmath
from knightctl.plugins.loader import load as load_plugins
from knightctl.plugins.registry import MetricDef
from knightctl.spec.monitor import monitor_goal
from knightctl.training.run import train
from knightctl.training.taskmetrics import TaskMetrics, class_keys

# Binary: logits and 0/1 targets as bce_with_logits gets them. Predicted [1, 0, 1, 0, 1] against
# true [1, 0, 0, 0, 1]: the confusion matrix (rows true, columns predicted) is [[2, 1], [0, 2]].
BINARY_LOGITS = torch.tensor([[2.0], [-1.0], [0.5], [-3.0], [1.0]])
BINARY_TARGETS = torch.tensor([[1.0], [0.0], [0.0], [0.0], [1.0]])


def built_ins(target: str, class_names: tuple[str, ...] = ()) -> TaskMetrics:
    registry = load_plugins().registry
    chosen = tuple(m for m in registry.metrics() if m.default and target in m.targets)
    return TaskMetrics(chosen, target, class_names, class_keys(class_names))


def test_binary_metrics_are_the_hand_computed_ones() -> None:
    values = built_ins("binary", ("defeat", "victory")).compute(BINARY_LOGITS, BINARY_TARGETS)
    floats = {key: float(value) for key, value in values.items()}
    assert floats["val/accuracy"] == pytest.approx(4 / 5)
    assert floats["val/precision/defeat"] == pytest.approx(2 / 2)  # both rows predicted defeat are
    assert floats["val/precision/victory"] == pytest.approx(2 / 3)
    assert floats["val/recall/defeat"] == pytest.approx(2 / 3)  # of 3 defeats, 2 predicted
    assert floats["val/recall/victory"] == pytest.approx(2 / 2)
    assert floats["val/f1/defeat"] == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))  # 0.8
    assert floats["val/f1/victory"] == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))  # 0.8
    assert floats["val/macro_f1"] == pytest.approx(0.8)
    # Both positives (logits 2, 1) outscore all three negatives (-1, 0.5, -3): 6 pairs of 6.
    assert floats["val/roc_auc"] == pytest.approx(1.0)
    assert metricmath.confusion(BINARY_LOGITS, BINARY_TARGETS).tolist() == [[2, 1], [0, 2]]


def test_multiclass_metrics_leave_undefined_values_nan_rather_than_zero() -> None:
    # Three classes; true [0, 0, 1, 1], predicted [0, 1, 1, 1]: class 2 is neither present nor predicted.
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 5.0, 0.0], [1.0, 2.0, 0.0]])
    targets = torch.tensor([0, 0, 1, 1])
    assert metricmath.accuracy(logits, targets).item() == pytest.approx(3 / 4)
    precision = metricmath.precision(logits, targets)
    assert precision[:2].tolist() == pytest.approx([1.0, 2 / 3]) and math.isnan(precision[2])
    recall = metricmath.recall(logits, targets)
    assert recall[:2].tolist() == pytest.approx([1 / 2, 1.0]) and math.isnan(recall[2])
    f1 = metricmath.f1(logits, targets)
    assert f1[:2].tolist() == pytest.approx([2 / 3, 0.8]) and math.isnan(f1[2])
    assert metricmath.macro_f1(logits, targets).item() == pytest.approx((2 / 3 + 0.8) / 2)  # over classes 0, 1


def brute_force_auc(scores: list[float], labels: list[int]) -> float:
    pairs = [(p, n) for p, n in itertools.product(range(len(scores)), repeat=2) if labels[p] == 1 and labels[n] == 0]
    wins = sum(1.0 if scores[p] > scores[n] else 0.5 if scores[p] == scores[n] else 0.0 for p, n in pairs)
    return wins / len(pairs)


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        # Pairs (positive, negative): (.35,.1) 1, (.35,.4) 0, (.8,.1) 1, (.8,.4) 1, (.4,.1) 1, (.4,.4) tie 0.5.
        ([0.1, 0.4, 0.35, 0.8, 0.4], [0, 0, 1, 1, 1], 4.5 / 6),
        ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),  # all tied: a coin toss
        ([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], 1.0),
        ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),
        ([1.0, 1.0, 2.0, 0.0, 2.0, 0.0], [1, 0, 1, 0, 0, 1], 0.5),  # positives 1, 2, 0: 1.5 + 2.5 + 0.5 of 9
    ],
)
def test_roc_auc_counts_ties_as_halves(scores: list[float], labels: list[int], expected: float) -> None:
    got = metricmath.roc_auc(torch.tensor(scores).reshape(-1, 1), torch.tensor(labels, dtype=torch.float32)).item()
    assert got == pytest.approx(expected)
    assert got == pytest.approx(brute_force_auc(scores, labels))


def test_roc_auc_matches_pair_counting_on_many_ties_and_is_nan_with_one_class() -> None:
    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 6, (60,), generator=generator).float()  # six distinct values: ties everywhere
    labels = torch.randint(0, 2, (60,), generator=generator)
    got = metricmath.roc_auc(scores.reshape(-1, 1), labels.float().reshape(-1, 1)).item()
    assert got == pytest.approx(brute_force_auc(scores.tolist(), labels.tolist()), abs=1e-7)  # float32 at the end
    assert math.isnan(metricmath.roc_auc(scores.reshape(-1, 1), torch.ones(60, 1)).item())


def test_regression_metrics_are_the_hand_computed_ones() -> None:
    outputs, targets = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([[1.0], [3.0], [3.0]])
    values = {k: float(v) for k, v in built_ins("real").compute(outputs, targets).items()}
    assert values["val/mae"] == pytest.approx(2 / 3)  # errors 0, 1, 1
    assert values["val/rmse"] == pytest.approx(math.sqrt(2 / 3))
    # Mean target 7/3: SS_tot = 16/9 + 4/9 + 4/9 = 8/3, SS_res = 2, R² = 1 - 2 / (8/3).
    assert values["val/r2"] == pytest.approx(0.25)
    # A second output column whose targets never vary has no R²: the mean is over the first alone.
    two = torch.cat([outputs, torch.zeros(3, 1)], dim=1), torch.cat([targets, torch.ones(3, 1)], dim=1)
    assert metricmath.r2(*two).item() == pytest.approx(0.25)


def test_undefined_built_in_values_are_left_out_and_a_plugin_s_are_refused() -> None:
    task = built_ins("binary", ("a", "b"))
    assert task.check(5, {"val/loss": 0.3, "val/roc_auc": float("nan"), "val/accuracy": 0.5}) == {
        "val/loss": 0.3,
        "val/accuracy": 0.5,
    }
    shaky = MetricDef(name="lab::shaky", fn=lambda o, t: 0.0, goal="max", plugin="labplugin")
    with pytest.raises(PluginError, match=r"plugin 'labplugin': metric 'lab::shaky' returned inf for val/lab.shaky"):
        TaskMetrics((shaky,), "binary").check(5, {"val/lab.shaky": float("inf")})


def test_class_names_become_safe_distinct_metric_name_parts() -> None:
    assert class_keys(["Iris setosa", "Iris-versicolor", "a/b", "a b", ".", "ünï"]) == (
        "Iris_setosa",
        "Iris-versicolor",
        "a_b",
        "a_b_2",
        "class4",
        "n",
    )


def test_a_per_class_metric_is_named_after_its_metric_and_a_declared_goal_wins() -> None:
    assert monitor_goal("val/f1/setosa", "auto") == "max"  # the middle part, not the class, is the metric
    assert monitor_goal("val/mae", "auto") == "min"
    assert monitor_goal("val/hit_rate", "auto", "max") == "max"  # the MetricDef's goal
    assert monitor_goal("val/hit_rate", "min", "max") == "min"  # train.monitor_mode says otherwise


PLUGIN = """
from knightctl import MetricDef, hookimpl


def hit_rate(outputs, targets):
    return ((outputs > 0).float() == targets).float().mean()


@hookimpl
def register_metrics(register):
    register(MetricDef(name="hit_rate", fn=hit_rate, goal="max", targets=("binary",)))
"""


def spec_file(tmp_path: Path, body: str, plugin: str | None = None, **sets: str) -> Path:
    if plugin is not None:
        (tmp_path / "lab.py").write_text(plugin)
    text = textwrap.dedent(
        f"""\
        name: metric_spec
        plugins: {"[lab.py]" if plugin is not None else "[]"}
        seed: 7
        data: {{name: battles, n_samples: 64}}
        model:
          - {{type: linear, in_features: 2, out_features: 4}}
          - relu
          - {{type: linear, in_features: 4, out_features: 1}}
        loss: bce_with_logits
        optimizer: {{name: adam, lr: 0.1}}
        train: {{epochs: 4, batch_size: full, device: cpu, eval_every_n_epochs: 1}}
        tracking: {{log_model: false}}
        """
    )
    path = tmp_path / "spec.yaml"
    path.write_text(text + body)
    return path


def test_a_plugin_metric_is_logged_at_each_evaluation_and_monitored_by_its_declared_goal(tmp_path: Path) -> None:
    path = spec_file(tmp_path, "metrics: [hit_rate, accuracy]\n", PLUGIN)
    result = train(path, track=False, overrides=["train.monitor=val/hit_rate"], skip_gradcheck=True)
    logged = [values["val/hit_rate"] for _, values in result.history if "val/hit_rate" in values]
    accuracy = [values["val/accuracy"] for _, values in result.history if "val/accuracy" in values]
    assert len(logged) == 4 and logged == pytest.approx(accuracy)  # the same thing, said twice
    assert "val/macro_f1" not in result.final_metrics  # the spec chose its metrics
    assert result.best is not None and result.best.goal == "max"  # 'hit_rate' is no accuracy-like name
    assert result.best.value == max(logged)
    assert result.evaluation is not None and result.evaluation.values["val/hit_rate"] == pytest.approx(
        result.best.value
    )  # measured again on the best step's weights


@pytest.mark.parametrize(
    ("returned", "says"),
    [
        ("float('nan')", "returned nan for val/lab.bad at step 1"),
        ("'high'", "returned str; a metric returns a number or a 0-dim tensor"),
        ("outputs", r"returned a tensor of shape \(\d+, 1\)"),
        ("1 / 0", "raised ZeroDivisionError: division by zero"),
    ],
)
def test_a_misbehaving_plugin_metric_fails_the_run_naming_the_plugin_and_the_metric(
    tmp_path: Path, returned: str, says: str
) -> None:
    plugin = PLUGIN.replace('name="hit_rate", fn=hit_rate', 'name="lab::bad", fn=bad') + (
        f"\n\ndef bad(outputs, targets):\n    return {returned}\n"
    )
    path = spec_file(tmp_path, "metrics: ['lab::bad']\n", plugin)
    with pytest.raises(PluginError, match=rf"plugin 'lab': metric 'lab::bad' {says}"):
        train(path, track=False, skip_gradcheck=True)


def test_a_regression_run_logs_mae_rmse_and_r2(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(80, 2, generator=generator)
    y = 150 + 40 * x[:, 0] - 20 * x[:, 1]  # a target of mean about 160, as the was
    rows = "\n".join(f"{a:.5f},{b:.5f},{t:.5f}" for (a, b), t in zip(x.tolist(), y.tolist(), strict=True))
    (tmp_path / "rows.csv").write_text("a,b,y\n" + rows + "\n")
    (tmp_path / "spec.yaml").write_text(
        textwrap.dedent(
            """\
            name: regression
            seed: 1
            data: {name: csv, path: rows.csv, features: [a, b], target: y}
            model: [{type: linear, in_features: 2, out_features: 1}]
            loss: mse
            optimizer: {name: adam, lr: 0.5}
            train: {epochs: 30, batch_size: full, device: cpu}
            tracking: {log_model: false}
            """
        )
    )
    result = train(tmp_path / "spec.yaml", track=False, skip_gradcheck=True)
    final = result.final_metrics
    assert {"val/mae", "val/rmse", "val/r2"} <= set(final)
    assert not {"val/accuracy", "val/macro_f1"} & set(final)
    assert final["val/rmse"] == pytest.approx(math.sqrt(final["val/loss"]), rel=1e-4)  # RMSE is MSE's root
    assert final["val/mae"] <= final["val/rmse"]
    assert result.evaluation is not None and result.evaluation.confusion is None
    assert set(result.evaluation.values) == {"val/mae", "val/rmse", "val/r2"}
