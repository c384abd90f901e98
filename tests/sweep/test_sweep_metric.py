"""A sweep's --metric is checked against what its trials log before any trial runs or any run exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from knightctl.errors import SweepError
from knightctl.spec.model import load_spec
from knightctl.sweep.metriccheck import check_metric
from knightctl.sweep.run import sweep

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"
MORDRED = ROOT / "experiments" / "mordred.yaml"


def test_a_misspelled_metric_fails_before_any_trial_or_run_listing_the_names_there_are(tmp_path: Path) -> None:
    with pytest.raises(SweepError) as caught:
        sweep(ROUND_TABLE, grid=["optimizer.lr=0.1,0.2"], metric="val/acc", tracking_uri=f"sqlite:///{tmp_path}/m.db")
    message = str(caught.value)
    assert message.startswith("--metric 'val/acc' is not a metric the trials log (did you mean 'val/accuracy'?)")
    assert (
        "they log: epoch, train/grad_norm, train/loss, train/lr, train/samples_per_s, val/accuracy, val/loss" in message
    )
    assert (
        "per class val/f1/<class>, val/precision/<class>, val/recall/<class> for <class> in defeat, victory" in message
    )
    assert caught.value.exit_code == 2  # bad input, as a spec error
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "checkpoints").exists()  # no parent run, no trial


@pytest.mark.parametrize(
    ("spec", "metric"),
    [
        (ROUND_TABLE, "val/loss"),
        (ROUND_TABLE, "train/loss"),
        (ROUND_TABLE, "val/roc_auc"),
        (ROUND_TABLE, "val/f1/victory"),  # per class: the classes come from the data
        (MORDRED, "val/recall/retreat"),
    ],
)
def test_every_metric_a_run_logs_passes(spec: Path, metric: str) -> None:
    check_metric(metric, [("", load_spec(spec))])


@pytest.mark.parametrize(
    ("sets", "metric", "expected"),
    [
        ([], "val/f1/feint", "did you mean 'val/f1/defeat'?"),  # a class the data does not have
        (["metrics=[accuracy]"], "val/macro_f1", "they log: epoch, train/grad_norm, train/loss"),  # not chosen
        ([], "val/mae", "not a metric the trials log"),  # a regression metric on a classifier
    ],
)
def test_a_metric_the_runs_would_not_log_is_refused(sets: list[str], metric: str, expected: str) -> None:
    with pytest.raises(SweepError, match=expected):
        check_metric(metric, [("", load_spec(ROUND_TABLE, sets))])


def test_a_trial_that_would_not_log_the_metric_is_named(tmp_path: Path) -> None:
    with pytest.raises(SweepError) as caught:
        sweep(
            ROUND_TABLE, grid=["data.val_fraction=0.2,0"], metric="val/loss", tracking_uri=f"sqlite:///{tmp_path}/m.db"
        )
    assert str(caught.value) == (
        "--metric 'val/loss': trial val_fraction=0 does not log it (did you mean 'train/loss'?); it logs: epoch, "
        "train/grad_norm, train/loss, train/lr, train/samples_per_s"
    )
    assert not (tmp_path / "m.db").exists()


def test_a_plugin_metric_is_one_the_runs_log(tmp_path: Path) -> None:
    (tmp_path / "lab.py").write_text(
        "from knightctl import MetricDef, hookimpl\n\n\n"
        "@hookimpl\n"
        "def register_metrics(register):\n"
        "    register(MetricDef(name='lab::hit_rate', fn=lambda outputs, targets: 1.0, goal='max'))\n"
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        ROUND_TABLE.read_text().replace("seed: 42\n", "seed: 42\nplugins: [lab.py]\nmetrics: [lab::hit_rate]\n")
    )
    check_metric("val/lab.hit_rate", [("", load_spec(spec))])
    with pytest.raises(SweepError, match=r"'val/lab.hit_rat' .*did you mean 'val/lab.hit_rate'\?\); they log: epoch"):
        check_metric("val/lab.hit_rat", [("", load_spec(spec))])
