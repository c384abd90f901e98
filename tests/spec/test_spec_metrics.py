"""A spec's `metrics:`: names checked against the registry and the loss's targets, like any component."""

from __future__ import annotations

from pathlib import Path

import pytest

from knightctl.errors import SpecError
from knightctl.plugins.loader import load as load_plugins
from knightctl.spec.metrics import chosen_metrics
from knightctl.spec.model import load_spec
from knightctl.sweep.run import ranking_of

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"


def problems(sets: list[str]) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(ROUND_TABLE, sets)
    return str(caught.value)


def test_by_default_a_spec_measures_its_tasks_built_in_metrics() -> None:
    spec = load_spec(ROUND_TABLE)
    assert spec.metrics is None
    registry = load_plugins().registry
    names = [metric.name for metric in chosen_metrics(spec.metrics, registry, "binary")]
    assert names == ["accuracy", "f1", "macro_f1", "precision", "recall", "roc_auc"]
    assert [m.name for m in chosen_metrics(None, registry, "class")] == [n for n in names if n != "roc_auc"]
    assert [m.name for m in chosen_metrics(None, registry, "real")] == ["mae", "r2", "rmse"]
    assert load_spec(ROUND_TABLE, ["metrics=[roc_auc, accuracy]"]).metrics == ("roc_auc", "accuracy")
    assert load_spec(ROUND_TABLE, ["metrics=[]"]).metrics == ()


def test_an_unknown_metric_is_refused_listing_the_known_ones() -> None:
    message = problems(["metrics=[accuracy, macro_f]"])
    assert "metrics.1: unknown metric 'macro_f'; did you mean 'macro_f1'? available: accuracy, f1, macro_f1" in message
    assert "plugins loaded: builtin.layers" in message


def test_a_metric_that_does_not_fit_the_loss_repeated_names_and_no_validation_split_are_refused() -> None:
    message = problems(["metrics=[mae, accuracy, accuracy]", "data.val_fraction=0"])
    assert "metrics.0: metric 'mae' is for real targets, and loss 'bce_with_logits' trains on binary ones" in message
    assert "metrics.2: metric 'accuracy' is listed twice" in message
    assert "metrics: metrics are measured on the validation split, and data.val_fraction is 0" in message
    assert "metrics: Input should be a valid tuple" in problems(["metrics=accuracy"])


def test_monitoring_a_metric_the_spec_does_not_measure_is_refused_before_the_run(tmp_path: Path) -> None:
    from knightctl.training.run import train

    with pytest.raises(SpecError, match=r"train.monitor: 'val/macro_f1' is not a metric this run logs; it logs .*val/"):
        train(ROUND_TABLE, overrides=["metrics=[accuracy]", "train.monitor=val/macro_f1"], track=False)


@pytest.mark.parametrize(
    ("metric", "goal"),
    [("val/f1/victory", "max"), ("val/recall/defeat", "max"), ("val/roc_auc", "max"), ("val/loss", "min")],
)
def test_a_sweep_ranks_any_task_metric_by_its_goal(metric: str, goal: str) -> None:
    assert ranking_of(load_spec(ROUND_TABLE), metric, "auto") == (metric, goal)


def test_a_sweep_ranks_a_plugin_metric_by_its_declared_goal(tmp_path: Path) -> None:
    (tmp_path / "lab.py").write_text(
        "from knightctl import MetricDef, hookimpl\n\n\n"
        "@hookimpl\n"
        "def register_metrics(register):\n"
        "    register(MetricDef(name='hit_rate', fn=lambda outputs, targets: 1.0, goal='max'))\n"
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(ROUND_TABLE.read_text().replace("seed: 42\n", "seed: 42\nplugins: [lab.py]\n"))
    assert ranking_of(load_spec(spec), "val/hit_rate", "auto") == ("val/hit_rate", "max")  # not by its name
