"""Every metric key knightctl makes of a plugin's metric is one MLflow takes: a name too long for
that is refused when its plugin registers it, and the longest keys a name that passes becomes (per
class, in an evaluation, in a sweep's parent) are stored by MLflow's own log_batch."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from knightctl.errors import PluginError
from knightctl.plugins.metricdef import MAX_NAME_LENGTH, MetricDef
from knightctl.plugins.registry import Registry
from knightctl.tracking.evaluations import evaluation_metrics
from knightctl.tracking.sweeps import best_metric_name
from knightctl.training.taskmetrics import TaskMetrics, class_keys


def _metric(name: str, **fields: object) -> MetricDef:
    return MetricDef(name=name, fn=lambda outputs, targets: 0.0, goal="max", plugin="labplugin", **fields)  # type: ignore[arg-type]


def test_a_metric_name_too_long_for_mlflow_keys_is_refused_naming_its_plugin() -> None:
    too_long = "lab::" + "m" * (MAX_NAME_LENGTH - 4)
    with pytest.raises(PluginError) as caught:
        Registry().check(_metric(too_long), plugin="labplugin")
    assert str(caught.value).startswith(f"plugin 'labplugin': metric '{too_long}': the name has 129 characters")
    assert "at most 128" in str(caught.value)
    Registry().check(_metric(too_long[:-1]), plugin="labplugin")  # 128: taken


def test_the_longest_keys_of_a_name_that_passes_are_ones_mlflow_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metric = _metric("lab::" + "m" * (MAX_NAME_LENGTH - 5), per_class=True)
    Registry().check(metric, plugin="labplugin")
    # Class names as data may give them: long, and alike once made safe (keys of 60, then `_2`...`_12`).
    classes = tuple("c" * 100 + "!" * copy for copy in range(12))
    task = TaskMetrics((metric,), "class", classes, class_keys(classes))
    keys = task.keys
    keys += list(evaluation_metrics(SimpleNamespace(values=dict.fromkeys(keys, 1.0)), None))  # type: ignore[arg-type]
    keys += [best_metric_name(key) for key in task.keys]
    assert max(len(key) for key in keys) == len("sweep/best_val_lab.") + 123 + len("_") + 63

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("keys")).info.run_id
    client.log_batch(run_id, metrics=[Metric(key, 1.0, 0, 0) for key in keys], synchronous=True)
    assert set(client.get_run(run_id).data.metrics) == set(keys)
    with pytest.raises(MlflowException, match="maximum length of 250"):  # the limit the headroom is for
        client.log_batch(run_id, metrics=[Metric("k" * 251, 1.0, 0, 0)], synchronous=True)
