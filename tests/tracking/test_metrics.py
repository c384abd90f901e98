"""Metric bookkeeping: window means, the step a loss went non-finite, and the writer process."""

from __future__ import annotations

import math
import signal
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
    for step in range(1, 2501):  # more than one log_batch call (1000 metrics each)
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
    with pytest.raises(TrackingError, match=f"metrics of run {run_id} were not all written"):
        writer.close()


def test_the_sqlite_bulk_insert_stores_what_log_batch_stores(store_run: tuple[MlflowClient, str, str]) -> None:
    """Same rows, same latest values, NaN and inf and repeats included, as MLflow's own log_batch."""
    from mlflow.entities import Metric

    from knightctl.tracking.sqlitemetrics import SqliteMetricSink

    client, uri, bulk_run = store_run
    reference_run = client.create_run(client.get_experiment_by_name("writer").experiment_id).info.run_id
    batches = [
        [
            ("loss", 0.5, 1000, 1),
            ("loss", float("nan"), 1001, 2),
            ("acc", float("inf"), 1001, 2),
            ("acc", -float("inf"), 1002, 3),
        ],
        [
            ("loss", 0.25, 1003, 3),
            ("loss", 0.25, 1003, 3),
            ("loss", 0.75, 900, 0),
        ],  # a repeat; an older step arriving late
        [("loss", 0.5, 1000, 1), ("acc", 0.5, 1004, 3)],  # a repeat of a stored row; a later timestamp at the same step
    ]
    sink = SqliteMetricSink(uri, bulk_run)
    for batch in batches:
        sink.write(batch)
        client.log_batch(reference_run, metrics=[Metric(*entry) for entry in batch], synchronous=True)
    sink.close()

    def rows(run_id: str, key: str) -> list[tuple[int, int, float]]:
        return sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))

    for key in ("loss", "acc"):
        assert str(rows(bulk_run, key)) == str(rows(reference_run, key))  # str: nan == nan
    assert str(client.get_run(bulk_run).data.metrics) == str(client.get_run(reference_run).data.metrics)
    assert len(rows(bulk_run, "loss")) == 4


def test_the_bulk_insert_refuses_a_deleted_run_as_log_batch_does(store_run: tuple[MlflowClient, str, str]) -> None:
    from knightctl.tracking.sqlitemetrics import InactiveRun, SqliteMetricSink

    client, uri, run_id = store_run
    client.delete_run(run_id)
    with pytest.raises(InactiveRun, match="deleted"):
        SqliteMetricSink(uri, run_id).write([("loss", 1.0, 1, 1)])
    assert client.get_metric_history(run_id, "loss") == []


def test_a_writer_started_before_its_run_can_be_abandoned_without_touching_the_store(tmp_path: Path) -> None:
    writer = MetricWriter(f"sqlite:///{tmp_path}/mlflow.db")  # started while the run is being prepared
    writer.abandon()  # the run never came: a build error, a failed gradient check
    writer.abandon()
    # It stops on its own once MLflow is imported, or is killed after 5 s on a loaded machine (it
    # ignores SIGTERM, so that a Ctrl-C to the process group leaves it to finish a run's metrics).
    assert not writer._process.is_alive() and writer._process.exitcode in (0, -signal.SIGKILL)
    assert not (tmp_path / "mlflow.db").exists()
