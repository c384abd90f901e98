"""Metric bookkeeping: window means, the step a loss went non-finite, and the writer process."""

from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from knightctl.errors import RunFailed, TrackingError
from knightctl.tracking.metricwriter import MetricWriter
from knightctl.training.metrics import StepMetrics, gradient_norm


def test_windows_average_their_own_steps_across_collections() -> None:
    metrics = StepMetrics()
    for step in range(1, 8):
        metrics.add_loss(torch.tensor(float(step)))
        if step % 3 == 0:
            metrics.close_window(step, lr=0.1)
    first = metrics.collect()
    assert first == [(3, {"train/loss": 2.0, "train/lr": 0.1}), (6, {"train/loss": 5.0, "train/lr": 0.1})]
    for step in range(8, 10):
        metrics.add_loss(torch.tensor(float(step)))
    metrics.close_window(9, lr=0.05)
    metrics.add_point(9, {"val/loss": torch.tensor(0.5), "epoch": 3.0})
    assert metrics.collect() == [(9, {"train/loss": 8.0, "train/lr": 0.05}), (9, {"val/loss": 0.5, "epoch": 3.0})]


def test_the_first_non_finite_loss_is_named_by_its_step() -> None:
    metrics = StepMetrics()
    for value in (0.5, 0.4, math.inf, math.nan):
        metrics.add_loss(torch.tensor(value))
    with pytest.raises(RunFailed, match="became inf at step 3"):
        metrics.collect()


def test_gradient_norm_is_the_norm_of_all_gradients_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """With torch.nn.utils.get_total_norm (torch 2.6 on), and without it, as on torch 2.4 and 2.5; a
    parameter without a gradient (frozen) counts for nothing, and no gradient at all is 0."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)
    model(torch.ones(4, 3)).sum().backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm()
    assert torch.allclose(gradient_norm(model), expected)
    monkeypatch.delattr(torch.nn.utils, "get_total_norm", raising=False)
    assert torch.allclose(gradient_norm(model), expected)
    assert gradient_norm(torch.nn.Linear(3, 2)).item() == 0.0


@pytest.fixture
def store_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[MlflowClient, str, str]:
    """A fresh sqlite store (its ./mlruns in tmp) with one run: (client, uri, run id)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    return client, uri, client.create_run(client.create_experiment("writer")).info.run_id


def test_the_writer_process_stores_every_metric(store_run: tuple[MlflowClient, str, str]) -> None:
    client, uri, run_id = store_run
    writer = MetricWriter(uri, run_id)
    writer.wait_ready()
    for step in range(1, 2501):  # more than one log_batch call (MLflow takes 1000 metrics a call)
        writer.add(step, {"a": step / 10})
        if step % 700 == 0:
            writer.flush()
    writer.close()
    history = client.get_metric_history(run_id, "a")
    assert sorted(m.step for m in history) == list(range(1, 2501))
    assert {m.step: m.value for m in history}[2500] == 250.0


def test_a_writer_for_a_missing_run_says_so_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    writer = MetricWriter(f"sqlite:///{tmp_path}/mlflow.db", "no-such-run")
    with pytest.raises(TrackingError, match="cannot write metrics to MLflow run no-such-run: .*not found"):
        writer.wait_ready()


@pytest.mark.slow
def test_metrics_the_store_refuses_fail_loudly_at_close(store_run: tuple[MlflowClient, str, str]) -> None:
    client, uri, run_id = store_run
    writer = MetricWriter(uri, run_id)
    writer.wait_ready()
    client.delete_run(run_id)  # MLflow refuses metrics for a deleted run
    writer.add(1, {"a": 1.0})
    with pytest.raises(
        TrackingError, match=f"metrics of run {run_id} were not all written: MLflow did not take 1 metric"
    ):
        writer.close()


def test_nan_and_infinite_values_are_stored_as_mlflow_stores_them(store_run: tuple[MlflowClient, str, str]) -> None:
    """The point a run fails at (a NaN train/loss, training/loop.py) is on its curve, at its step."""
    client, uri, run_id = store_run
    writer = MetricWriter(uri, run_id)
    writer.wait_ready()
    writer.add(1, {"train/loss": 0.5, "big": math.inf})
    writer.add(2, {"train/loss": math.nan, "big": -math.inf})
    writer.close()
    losses = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in losses] == [1, 2] and losses[0].value == 0.5 and math.isnan(losses[1].value)
    assert math.isnan(client.get_run(run_id).data.metrics["train/loss"])  # the latest value, NaN included
    # SQL has no infinity: MLflow stores +-inf as the largest finite float of that sign.
    assert [m.value for m in client.get_metric_history(run_id, "big")] == [sys.float_info.max, -sys.float_info.max]


def test_a_key_mlflow_refuses_stops_the_writer_and_the_next_flush_names_it(
    store_run: tuple[MlflowClient, str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    client, uri, run_id = store_run
    writer = MetricWriter(uri, run_id)
    writer.wait_ready()
    writer.add(1, {"train/loss": 0.5, "../x": 1.0})  # a path out of the run's folder: MLflow refuses it
    deadline = time.monotonic() + 60  # s: the writer writes within 0.2 s, slower on a loaded machine
    with pytest.raises(TrackingError) as caught:
        while time.monotonic() < deadline:
            writer.flush()  # raises once the writer has said it stopped
            time.sleep(0.05)
    message = str(caught.value)
    assert message.startswith(f"metrics of run {run_id} were not all written: MLflow did not take 2 metrics at step 1")
    assert "'../x'" in message and "\n" not in message
    assert writer.closed and not writer._process.is_alive()
    writer.close()  # closed already: nothing more to say
    writer.add(2, {"train/loss": 0.4})
    writer.flush()  # nothing takes them any more, and the error was raised already
    assert client.get_metric_history(run_id, "train/loss") == []  # MLflow refuses the whole batch
    err = capfd.readouterr().err  # the writer's standard error is the terminal's
    assert "Traceback" not in err and "Fatal Python error" not in err


def test_a_writer_started_before_its_run_can_be_abandoned_without_touching_the_store(tmp_path: Path) -> None:
    writer = MetricWriter(f"sqlite:///{tmp_path}/mlflow.db")  # started while the run is being prepared
    writer.abandon()  # the run never came: a build error, a failed gradient check
    writer.abandon()
    # It stops on its own once MLflow is imported, or is killed after 5 s on a loaded machine (it
    # ignores SIGTERM, so that a Ctrl-C to the process group leaves it to finish a run's metrics).
    assert not writer._process.is_alive() and writer._process.exitcode in (0, -signal.SIGKILL)
    assert not (tmp_path / "mlflow.db").exists()
