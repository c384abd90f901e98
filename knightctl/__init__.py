"""knightctl: an experiment runner for custom autograd ops. The public API, loaded lazily.

`import knightctl` stays cheap (no torch, no mlflow, no pydantic): names that need them are
imported on first use, so `knightctl --help` answers at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from knightctl._version import __version__
from knightctl.errors import KnightctlError
from knightctl.hookspecs import hookimpl

if TYPE_CHECKING:
    from knightctl.devices import DeviceChoice, resolve_device  # noqa: F401
    from knightctl.gradcheck import OpReport, check_op, check_ops  # noqa: F401
    from knightctl.plugins import PluginSettings, PluginSystem  # noqa: F401
    from knightctl.plugins import load as load_plugins  # noqa: F401
    from knightctl.registry import DatasetDef, LayerDef, LossDef, OpDef, OptimizerDef, Params, Sample, SchedulerDef  # noqa: F401
    from knightctl.spec import ExperimentSpec, load_spec  # noqa: F401
    from knightctl.training import RunInfo, RunResult, train  # noqa: F401
    from knightctl.resumecheck import verify_resume  # noqa: F401
    from knightctl.checkpoint import load_checkpoint  # noqa: F401

_LAZY: dict[str, tuple[str, str]] = {
    "load_spec": ("knightctl.spec", "load_spec"),
    "ExperimentSpec": ("knightctl.spec", "ExperimentSpec"),
    "train": ("knightctl.training", "train"),
    "RunInfo": ("knightctl.training", "RunInfo"),
    "RunResult": ("knightctl.training", "RunResult"),
    "verify_resume": ("knightctl.resumecheck", "verify_resume"),
    "load_checkpoint": ("knightctl.checkpoint", "load_checkpoint"),
    "resolve_device": ("knightctl.devices", "resolve_device"),
    "DeviceChoice": ("knightctl.devices", "DeviceChoice"),
    "load_plugins": ("knightctl.plugins", "load"),
    "PluginSystem": ("knightctl.plugins", "PluginSystem"),
    "PluginSettings": ("knightctl.plugins", "PluginSettings"),
    "Params": ("knightctl.registry", "Params"),
    "LayerDef": ("knightctl.registry", "LayerDef"),
    "LossDef": ("knightctl.registry", "LossDef"),
    "OptimizerDef": ("knightctl.registry", "OptimizerDef"),
    "SchedulerDef": ("knightctl.registry", "SchedulerDef"),
    "DatasetDef": ("knightctl.registry", "DatasetDef"),
    "OpDef": ("knightctl.registry", "OpDef"),
    "Sample": ("knightctl.registry", "Sample"),
    "check_op": ("knightctl.gradcheck", "check_op"),
    "check_ops": ("knightctl.gradcheck", "check_ops"),
    "OpReport": ("knightctl.gradcheck", "OpReport"),
}

__all__ = ["__version__", "KnightctlError", "hookimpl", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'knightctl' has no attribute {name!r}")
