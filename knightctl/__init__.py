"""knightctl: an experiment runner for custom autograd ops. The public API, loaded lazily.

`import knightctl` stays cheap (no torch, no mlflow, no pydantic): names that need them are
imported on first use, so `knightctl --help` answers at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from knightctl._version import __version__
from knightctl.errors import KnightctlError, VmapFallbackWarning
from knightctl.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from knightctl.checkpoint.files import load_checkpoint  # noqa: F401
    from knightctl.checkpoint.verify import verify_resume  # noqa: F401
    from knightctl.gradcheck import OpReport, check_op, check_ops  # noqa: F401
    from knightctl.plugins.events import RunInfo, RunResult  # noqa: F401
    from knightctl.plugins.loader import load as load_plugins  # noqa: F401
    from knightctl.plugins.metricdef import MetricDef  # noqa: F401
    from knightctl.plugins.registry import DatasetDef, LayerDef, LossDef, OpDef, OptimizerDef, Params, SchedulerDef  # noqa: F401
    from knightctl.plugins.sample import Sample  # noqa: F401
    from knightctl.plugins.system import PluginSettings, PluginSystem  # noqa: F401
    from knightctl.spec.model import ExperimentSpec, load_spec  # noqa: F401
    from knightctl.training.data import TabularData  # noqa: F401
    from knightctl.training.devices import DeviceChoice, resolve_device  # noqa: F401
    from knightctl.training.run import train  # noqa: F401

_LAZY: dict[str, tuple[str, str]] = {
    "load_spec": ("knightctl.spec.model", "load_spec"),
    "ExperimentSpec": ("knightctl.spec.model", "ExperimentSpec"),
    "train": ("knightctl.training.run", "train"),
    "RunInfo": ("knightctl.plugins.events", "RunInfo"),
    "RunResult": ("knightctl.plugins.events", "RunResult"),
    "verify_resume": ("knightctl.checkpoint.verify", "verify_resume"),
    "load_checkpoint": ("knightctl.checkpoint.files", "load_checkpoint"),
    "resolve_device": ("knightctl.training.devices", "resolve_device"),
    "DeviceChoice": ("knightctl.training.devices", "DeviceChoice"),
    "load_plugins": ("knightctl.plugins.loader", "load"),
    "PluginSystem": ("knightctl.plugins.system", "PluginSystem"),
    "PluginSettings": ("knightctl.plugins.system", "PluginSettings"),
    "Params": ("knightctl.plugins.registry", "Params"),
    "LayerDef": ("knightctl.plugins.registry", "LayerDef"),
    "LossDef": ("knightctl.plugins.registry", "LossDef"),
    "OptimizerDef": ("knightctl.plugins.registry", "OptimizerDef"),
    "SchedulerDef": ("knightctl.plugins.registry", "SchedulerDef"),
    "DatasetDef": ("knightctl.plugins.registry", "DatasetDef"),
    "OpDef": ("knightctl.plugins.registry", "OpDef"),
    "MetricDef": ("knightctl.plugins.metricdef", "MetricDef"),
    "TabularData": ("knightctl.training.data", "TabularData"),  # what a dataset plugin's build returns
    "Sample": ("knightctl.plugins.sample", "Sample"),
    "check_op": ("knightctl.gradcheck", "check_op"),
    "check_ops": ("knightctl.gradcheck", "check_ops"),
    "OpReport": ("knightctl.gradcheck", "OpReport"),
}

__all__ = ["__version__", "KnightctlError", "VmapFallbackWarning", "hookimpl", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'knightctl' has no attribute {name!r}")
