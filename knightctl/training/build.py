"""Turn a resolved spec into live objects: data on the device, model, loss, optimizer, scheduler, metrics.

Every plugin `build` call is wrapped so that an exception names the plugin and the component.
`dry_forward` runs one small batch through the model layer by layer before any MLflow run exists,
so a shape mistake names the layer instead of surfacing as a matmul error mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from knightctl.errors import DeviceError, KnightctlError, ModelShapeError, PluginError
from knightctl.plugins.oplayers import OpLayer
from knightctl.plugins.registry import ComponentDef, LossDef, Registry
from knightctl.spec.model import ExperimentSpec, LossSpec
from knightctl.training.data import Split, split_data
from knightctl.training.preprocessing import Preprocessing
from knightctl.training.taskmetrics import TaskMetrics, task_metrics


@dataclass
class Components:
    """Everything the training loop needs, on the chosen device."""

    model: nn.Sequential
    loss_fn: nn.Module
    loss_def: LossDef
    optimizer: torch.optim.Optimizer
    scheduler: Any | None
    data: Split
    task_metrics: TaskMetrics | None = None  # measured on the validation split (training/taskmetrics.py)


def build_components(
    spec: ExperimentSpec, registry: Registry, device: torch.device, seed: int, recorded: Preprocessing | None = None
) -> Components:
    """Data first (it has its own generator), then the model, so `seed` alone fixes the init.

    `recorded` is a resumed run's preprocessing: its standardisation is used rather than refitted."""
    base_dir = spec.source.base_dir if spec.source else Path.cwd()
    loss_def = _definition(registry, "loss", spec.loss.name)
    assert isinstance(loss_def, LossDef)
    dataset_def = _definition(registry, "dataset", spec.data.name)
    tabular = _call(dataset_def, _params(dataset_def, spec.data.options(), base_dir), base_dir, seed)
    data = split_data(
        tabular,
        val_fraction=spec.data.val_fraction,
        seed=seed,
        target=loss_def.target,
        dataset_name=spec.data.name,
        device=device,
        shuffle=spec.data.split.shuffle,
        stratify=spec.data.split.stratify,
        standardize=spec.data.standardize,
        recorded=recorded,
    )
    layers = []
    for layer in spec.model:
        definition = _definition(registry, "layer", layer.type)
        layers.append(_call(definition, _params(definition, layer.options(), base_dir)))
    model = nn.Sequential(*layers).to(device)
    loss_fn = _call(loss_def, _params(loss_def, spec.loss.options(), base_dir)).to(device)
    optimizer_def = _definition(registry, "optimizer", spec.optimizer.name)
    optimizer = _call(
        optimizer_def, model.parameters(), spec.optimizer.lr, _params(optimizer_def, spec.optimizer.options(), base_dir)
    )
    scheduler = None
    if spec.optimizer.scheduler is not None:
        scheduler_def = _definition(registry, "scheduler", spec.optimizer.scheduler.name)
        scheduler = _call(
            scheduler_def,
            optimizer,
            _params(scheduler_def, spec.optimizer.scheduler.options(), base_dir),
            spec.train.epochs,
        )
    metrics = task_metrics(spec.metrics, registry, loss_def.target, data)
    return Components(model, loss_fn, loss_def, optimizer, scheduler, data, metrics)


def _definition(registry: Registry, kind: str, name: str) -> ComponentDef:
    definition = registry.get(kind, name)
    if definition is None:  # load_spec checked it; a registry that changed since then did not
        raise PluginError(registry.unknown_name_message(kind, name))
    return definition


def _params(definition: ComponentDef, values: dict[str, Any], base_dir: Path) -> Any:
    return definition.params.model_validate(values, context={"base_dir": base_dir})


def _call(definition: ComponentDef, *args: Any) -> Any:
    try:
        return definition.build(*args)
    except KnightctlError:
        raise
    except Exception as exc:
        raise PluginError(
            f"plugin {definition.plugin!r} failed to build {definition.kind} {definition.name!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def dry_forward(parts: Components, spec: ExperimentSpec, rows: int = 8) -> None:
    """Push `rows` training rows through each layer and the loss; name the layer that breaks.

    Runs in eval mode under no_grad so it changes no state: no BatchNorm statistics, no dropout
    draws from the RNG (a run must match the plain loop it replaces, weight for weight).
    """
    x = parts.data.train_x[:rows]
    y = parts.data.train_y[:rows]
    was_training = parts.model.training
    parts.model.eval()
    try:
        with torch.no_grad():
            for index, layer in enumerate(parts.model):
                try:
                    x = layer(x)
                except Exception as exc:
                    raise _layer_error(exc, f"model.{index} ({spec.model[index].type})", layer, x) from None
            _check_outputs(x, y, parts, spec)
    finally:
        parts.model.train(was_training)


def _layer_error(exc: Exception, where: str, layer: nn.Module, x: torch.Tensor) -> KnightctlError:
    """A layer that fails the dry forward: a plugin op's own failure names the op and its plugin."""
    if isinstance(layer, OpLayer):
        if layer.halves and x.shape[-1] % 2:
            return ModelShapeError(f"{where} splits its input in two halves and needs an even width, not {x.shape[-1]}")
        if isinstance(exc, NotImplementedError):
            return DeviceError(
                f"{where}: op {layer.op_name} (plugin {layer.plugin!r}) has no kernel for {x.device.type}: "
                f"{exc}".strip(),
                hint="run on a device the op supports (--device cpu), or register a kernel for this device in the "
                "plugin",
            )
        return PluginError(
            f"{where}: op {layer.op_name} (plugin {layer.plugin!r}) raised on an input of shape {tuple(x.shape)}: "
            f"{type(exc).__name__}: {exc}"
        )
    if isinstance(exc, (RuntimeError, ValueError, TypeError, IndexError)):
        return ModelShapeError(f"{where} cannot take an input of shape {tuple(x.shape)}: {exc}")
    return PluginError(f"{where} raised on an input of shape {tuple(x.shape)}: {type(exc).__name__}: {exc}")


def _check_outputs(outputs: torch.Tensor, targets: torch.Tensor, parts: Components, spec: ExperimentSpec) -> None:
    last = f"model.{len(spec.model) - 1} ({spec.model[-1].type})"
    if parts.loss_def.target == "class":
        classes = parts.data.class_names
        n_classes = len(classes) if classes else int(parts.data.train_y.max()) + 1
        width = outputs.shape[-1] if outputs.ndim == 2 else None
        if width is None or width < n_classes:
            raise ModelShapeError(
                f"{last} gives outputs of shape {tuple(outputs.shape)}, but {spec.loss.name} needs one logit per "
                "class: "
                f"({outputs.shape[0]}, {n_classes}) for the {n_classes} classes in {spec.data.name!r}"
            )
    try:
        parts.loss_fn(outputs, targets)
    except (RuntimeError, ValueError) as exc:
        raise ModelShapeError(
            f"{last} gives outputs of shape {tuple(outputs.shape)} that {spec.loss.name} cannot compare with targets "
            "of "
            f"shape {tuple(targets.shape)}: {exc}"
        ) from None


def build_loss(loss: LossSpec, registry: Registry, base_dir: Path) -> tuple[nn.Module, LossDef]:
    """The spec's loss on its own (knightctl evaluate measures a logged model's loss on new rows)."""
    loss_def = _definition(registry, "loss", loss.name)
    assert isinstance(loss_def, LossDef)
    return _call(loss_def, _params(loss_def, loss.options(), base_dir)), loss_def
