"""Experiment specs: frozen pydantic models, `load_spec` with `--set` overrides, every error at once.

A spec is resolved in two passes over the same plain data: the structure (sections, types,
ranges) by the models below, and each component (layer, loss, optimizer, scheduler, dataset) by
the params model its plugin registered. Both passes report every problem with its field path, and
the file's line and column, before anything runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    model_serializer,
    model_validator,
)

from knightctl.errors import SpecError
from knightctl.plugins.registry import Registry
from knightctl.spec.problems import Problem, format_problem, problems_from_validation

if TYPE_CHECKING:
    from knightctl.plugins.system import PluginSettings
from knightctl.plugins.loader import load
from knightctl.spec.datachecks import split_problems
from knightctl.spec.file import Location, SpecDocument, read_spec_file
from knightctl.spec.metrics import metric_problems
from knightctl.spec.overrides import apply_overrides, normalise
from knightctl.spec.plugins import spec_plugin_files, spec_plugin_problems
from knightctl.spec.widths import static_width_problems

__all__ = ["ExperimentSpec", "load_spec"]


class SpecModel(BaseModel):
    """Frozen, strict (no "10" for 10), unknown fields refused, no NaN or infinity."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class FrozenDict(dict):  # type: ignore[type-arg]
    """A dict that refuses changes: a validated spec must not drift from its digest."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a validated spec cannot be changed; use --set or model_copy(update=...)")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return FrozenDict({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


class _Component(SpecModel):
    """A registry component: its own fields, plus `params`, the options its plugin validates.

    In YAML the options sit beside the name (`{type: linear, in_features: 2}`); they are gathered
    into `params` on the way in and spread out again on the way out.
    """

    params: Annotated[dict[str, Any], AfterValidator(_freeze)] = Field(default_factory=FrozenDict)

    def options(self) -> dict[str, Any]:
        """The component's options as a fresh, mutable dict (YAML lists as lists), for its plugin."""
        return _thaw(self.params)

    @model_validator(mode="before")
    @classmethod
    def _gather_params(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        own = set(cls.model_fields) - {"params"}
        return {key: data[key] for key in data if key in own} | {
            "params": {k: v for k, v in data.items() if k not in own}
        }

    @model_serializer(mode="wrap")
    def _spread_params(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        return {**{k: v for k, v in out.items() if k != "params"}, **out.get("params", {})}


class LayerSpec(_Component):
    type: str = Field(min_length=1)


class LossSpec(_Component):
    name: str = Field(min_length=1)


class SchedulerSpec(_Component):
    name: str = Field(min_length=1)


class OptimizerSpec(_Component):
    name: str = Field(min_length=1)
    lr: float = Field(gt=0.0, description="learning rate")
    scheduler: SchedulerSpec | None = None


class SplitSpec(SpecModel):
    shuffle: bool = Field(True, description="shuffle the rows with the seed first; false: hold out the last rows")
    stratify: bool = Field(False, description="hold out each class's share of its rows (classification only)")


class DataSpec(_Component):
    name: str = Field(min_length=1)
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of rows held out for validation")
    standardize: bool = Field(False, description="standardise features with the training split's mean and std")
    split: SplitSpec = SplitSpec()  # checked against the task by spec/datachecks.py


def _batch_size(value: Any) -> int | str:
    if value == "full" or (type(value) is int and value > 0):
        return value
    raise ValueError("must be a positive integer or 'full'")


def _every(value: Any) -> int | str:
    if value == "auto" or (type(value) is int and value > 0):
        return value
    raise ValueError("must be a positive integer or 'auto'")


def _device(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    if text in ("auto", "cpu", "mps", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise ValueError("must be auto, cpu, mps, cuda or cuda:N")


class EarlyStoppingSpec(SpecModel):
    monitor: str = Field(
        "auto", min_length=1, description="the metric watched; auto: train.monitor (val/loss by default)"
    )
    mode: Literal["auto", "min", "max"] = Field(
        "auto", description="whether lower or higher is better; auto: as train.monitor_mode decides"
    )
    patience: int = Field(gt=0, description="evaluations in a row without an improvement before training stops")
    min_delta: float = Field(0.0, ge=0.0, description="the least change that counts as an improvement")


class TrainSpec(SpecModel):
    epochs: int = Field(gt=0)
    batch_size: Annotated[int | Literal["full"], PlainValidator(_batch_size)] = 64
    device: Annotated[str, PlainValidator(_device)] = "auto"
    # torch's intra-op CPU threads; auto: one for a small model, else torch's own (training/threads.py)
    threads: Annotated[int | Literal["auto"], PlainValidator(_every)] = "auto"
    log_every_n_steps: int = Field(10, gt=0, description="steps per logged training-metric point")
    eval_every_n_epochs: Annotated[int | Literal["auto"], PlainValidator(_every)] = "auto"
    grad_clip: float | None = Field(None, gt=0.0, description="clip the global gradient norm to this")
    deterministic: bool = False
    monitor: str = Field(
        "auto",
        min_length=1,
        description="the metric that picks the model of record; auto: val/loss, or train/loss with no validation",
    )
    monitor_mode: Literal["auto", "min", "max"] = Field(
        "auto", description="whether lower or higher is better; auto: max for accuracy-like names, else min"
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="stop once the monitored metric stops improving; off unless given"
    )


class TrackingSpec(SpecModel):
    experiment: str | None = Field(None, min_length=1, description="MLflow experiment; default: the spec's name")
    uri: str | None = Field(None, min_length=1, description="MLflow tracking URI")
    run_name: str | None = Field(
        None, min_length=1, description="the MLflow run's name; default: the spec's name and what --set changed"
    )
    log_model: bool | Literal["best", "final"] = Field(
        True, description="log the model of record: best (true) by train.monitor, final (the last step), or false"
    )
    register_model: str | None = Field(
        None, min_length=1, max_length=250, description="also register the logged model under this name"
    )

    @model_validator(mode="after")
    def _registering_needs_a_model(self) -> TrackingSpec:
        if self.register_model is not None and self.log_model is False:
            raise ValueError("register_model needs a logged model: set log_model to true, best or final")
        return self


class CheckpointSpec(SpecModel):
    every_n_epochs: Annotated[int | Literal["auto"], PlainValidator(_every)] = Field(
        "auto", description="auto: about ten per run"
    )
    keep_last: int = Field(3, gt=0, description="checkpoints kept per run; older ones are deleted")
    dir: str = Field(
        "checkpoints", min_length=1, description="one subfolder per run in it; relative to the working directory"
    )


@dataclass(frozen=True)
class SpecSource:
    """Where a spec came from: its file, text, folder (data paths start there) and overrides."""

    path: str
    text: str
    base_dir: Path
    overrides: tuple[str, ...] = ()


class ExperimentSpec(SpecModel):
    """A whole experiment: data, model layers, loss, optimizer, training and tracking settings."""

    name: str = Field(min_length=1, max_length=250)
    description: str = ""
    seed: int | None = Field(None, ge=0, lt=2**32)
    plugins: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        (), strict=False, description="plugin files, relative to the spec"
    )
    data: DataSpec
    model: tuple[LayerSpec, ...] = Field(min_length=1, strict=False)  # YAML gives a list
    loss: LossSpec
    optimizer: OptimizerSpec
    train: TrainSpec
    metrics: tuple[Annotated[str, Field(min_length=1)], ...] | None = Field(
        None, strict=False, description="metrics measured on the validation split, by name; default: the task's own"
    )
    tracking: TrackingSpec = TrackingSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()

    _source: SpecSource | None = PrivateAttr(default=None)

    @property
    def source(self) -> SpecSource | None:
        return self._source

    def to_data(self) -> dict[str, Any]:
        """The resolved spec as plain YAML-ready data, every default filled in."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """SHA-256 of the resolved spec: equal digests, equal experiments."""
        return hashlib.sha256(json.dumps(self.to_data(), sort_keys=True).encode()).hexdigest()

    def plugin_paths(self) -> list[Path]:
        """The plugin files the spec lists, resolved against the spec's folder."""
        base_dir = self._source.base_dir if self._source else Path.cwd()
        return [(base_dir / entry).resolve() for entry in self.plugins]

    def with_seed(self, seed: int) -> ExperimentSpec:
        """A copy with `seed` filled in (the same source)."""
        copied = self.model_copy(update={"seed": seed})
        copied._source = self._source
        return copied


_COMPONENTS: tuple[tuple[str, type[_Component], str], ...] = (
    ("layer", LayerSpec, "type"),
    ("loss", LossSpec, "name"),
    ("optimizer", OptimizerSpec, "name"),
    ("scheduler", SchedulerSpec, "name"),
    ("dataset", DataSpec, "name"),
)


def load_spec(
    path: str | Path, overrides: Sequence[str] = (), *, plugins: PluginSettings | None = None, text: str | None = None
) -> ExperimentSpec:
    """Read, override and validate a spec; raise SpecError listing every problem.

    `overrides` are `PATH=VALUE` strings (`optimizer.lr=0.01`, `model.0.out_features=8`); values
    are parsed as YAML, so types are kept. Names resolve against the plugins loaded with `plugins`
    (default: from the environment) plus the plugin files the spec lists under `plugins:`. With
    `text`, that is the spec's YAML (as a checkpoint keeps it) and `path` only says where it was.
    """

    document = read_spec_file(path, text)
    raw = normalise(copy.deepcopy(document.data))
    override_locs = apply_overrides(raw, overrides, document.path)
    raw = normalise(raw)
    base_dir = Path(document.path).resolve().parent
    files, problems = spec_plugin_files(raw, base_dir)
    system = load(plugins, files=[file for _, file in files])
    problems += spec_plugin_problems(files, system)
    component_problems, resolved = _resolve_components(raw, system.registry, {"base_dir": base_dir})
    problems += component_problems
    registry = system.registry
    problems += metric_problems(raw, registry)
    problems += split_problems(raw, registry)
    try:
        spec = ExperimentSpec.model_validate(resolved)
    except ValidationError as exc:
        problems = problems_from_validation(exc, ExperimentSpec) + problems
        spec = None
    if spec is not None and not problems:
        problems = static_width_problems(spec, registry, base_dir)
    if problems or spec is None:
        raise SpecError(
            document.path, [format_problem(p, document, override_locs) for p in _ordered(problems, document)]
        )
    spec._source = SpecSource(document.path, document.text, base_dir, tuple(overrides))
    return spec


def _ordered(problems: list[Problem], document: SpecDocument) -> list[Problem]:
    return sorted(problems, key=lambda p: document.position_of(p.loc) or (10**9, 0))


def _resolve_components(
    raw: dict[str, Any], registry: Registry, context: dict[str, Any]
) -> tuple[list[Problem], dict[str, Any]]:
    """Check every component's name and options against the registry; fill in their defaults."""
    problems: list[Problem] = []
    resolved = copy.deepcopy(raw)
    places: list[tuple[str, Location]] = [
        ("dataset", ("data",)),
        ("loss", ("loss",)),
        ("optimizer", ("optimizer",)),
        ("scheduler", ("optimizer", "scheduler")),
    ]
    if isinstance(raw.get("model"), list):
        places += [("layer", ("model", i)) for i in range(len(raw["model"]))]
    for kind, loc in places:
        parent: Any = resolved
        for part in loc[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        try:
            current = parent[loc[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an absent section: the structural pass reports it
        done = _resolve_one(kind, current, loc, registry, context, problems)
        if done is not None:
            parent[loc[-1]] = done
    return problems, resolved


def _resolve_one(
    kind: str, raw: Any, loc: Location, registry: Registry, context: dict[str, Any], problems: list[Problem]
) -> dict[str, Any] | None:
    _, model, key = next(entry for entry in _COMPONENTS if entry[0] == kind)
    if not isinstance(raw, dict) or not isinstance(raw.get(key), str):
        return None  # the structural pass reports it
    definition = registry.get(kind, raw[key])
    if definition is None:
        problems.append(Problem((*loc, key), registry.unknown_name_message(kind, raw[key])))
        return None
    own = set(model.model_fields) - {"params"}
    options = {k: v for k, v in raw.items() if k not in own}
    try:
        params = definition.params.model_validate(options, context=context)
    except ValidationError as exc:
        for problem in problems_from_validation(exc, definition.params, loc, also_allowed=own):
            problems.append(Problem(problem.loc, f"{problem.message} [{kind} {raw[key]!r}]"))
        return None
    return {**{k: raw[k] for k in own if k in raw}, **params.model_dump(mode="json")}
