"""A sweep's `--metric`, checked against what its trials will log before any trial runs and before
its parent run exists: a misspelled name is one error (exit 2) listing the names there are, not a
sweep of failed trials.

The spec alone tells every name but the per-class ones (spec/loggednames.py), so the usual
check imports no torch. A per-class name (`val/f1/<class>`), or one that is not there, needs the
classes: then the spec's components are built on the CPU, as `train` builds them, and the name is
checked against exactly the set `train` checks `train.monitor` against (training/setup.py).
Trials that change what is logged (a `--grid` over `metrics` or `data.val_fraction`) are each
checked; trials that change nothing of it share one check.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence

from knightctl.errors import SweepError
from knightctl.plugins.loader import load as load_plugins
from knightctl.plugins.registry import Registry
from knightctl.plugins.system import PluginSettings
from knightctl.spec.loggednames import logged_metrics, spec_logged_metrics
from knightctl.spec.model import ExperimentSpec

_SHOWN_CLASSES = 12  # class names listed in the error; a 100-class spec's list would bury the rest


def check_metric(
    metric: str, specs: Sequence[tuple[str, ExperimentSpec]], plugins: PluginSettings | None = None
) -> None:
    """Raise SweepError unless every spec in `specs` ((trial label, spec); the base spec's label is
    "") logs `metric`."""
    checked: set[str] = set()
    for label, spec in specs:
        signature = _signature(spec)
        if signature in checked:
            continue
        checked.add(signature)
        registry = load_plugins(plugins, files=spec.plugin_paths()).registry
        told = spec_logged_metrics(spec, registry)
        if metric in told.names:
            continue
        names, classes = _built_names(spec, registry)
        if metric not in names:
            raise SweepError(_message(metric, label, names, told.per_class, classes))


def _signature(spec: ExperimentSpec) -> str:
    """What decides the names a run logs: its data (the split, the classes), loss, metrics and plugins."""
    data = spec.to_data()
    return json.dumps({key: data.get(key) for key in ("data", "loss", "metrics", "plugins")}, sort_keys=True)


def _built_names(spec: ExperimentSpec, registry: Registry) -> tuple[set[str], tuple[str, ...]]:
    """Every name a run of `spec` logs, and its class keys: its components built on the CPU."""
    import torch  # only here: the sweep's own process needs torch for a per-class or an unknown name

    from knightctl.training.build import build_components

    parts = build_components(spec, registry, torch.device("cpu"), spec.seed or 0)
    task = parts.task_metrics
    names = logged_metrics(has_validation=parts.data.val_x is not None, task_keys=task.keys if task else ())
    return names, (task.class_keys if task else ())


def _message(metric: str, label: str, names: set[str], per_class: Sequence[str], classes: Sequence[str]) -> str:
    """`--metric 'val/acc' is not a metric the trials log (did you mean 'val/accuracy'?); they log: ...`"""
    close = difflib.get_close_matches(metric, sorted(names), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    whole = sorted(name for name in names if not any(name.startswith(prefix + "/") for prefix in per_class))
    listed = ", ".join(whole)
    if per_class and classes:
        shown = ", ".join(classes[:_SHOWN_CLASSES]) + (", ..." if len(classes) > _SHOWN_CLASSES else "")
        listed += "; and per class " + ", ".join(f"{prefix}/<class>" for prefix in sorted(per_class))
        listed += f" for <class> in {shown}"
    if label:
        return f"--metric {metric!r}: trial {label} does not log it{hint}; it logs: {listed}"
    return f"--metric {metric!r} is not a metric the trials log{hint}; they log: {listed}"
