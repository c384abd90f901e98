"""Component definitions (what a plugin registers) and the name -> definition registry.

Nothing here imports torch: `knightctl validate` resolves every name and checks every option of a
spec against this registry without paying for torch. Only `build` callables touch torch, when a
run actually builds its model.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from knightctl.errors import PluginError
from knightctl.plugins.metricdef import MetricDef, TargetKind, check_metric

if TYPE_CHECKING:
    from pathlib import Path

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*(::[A-Za-z_][A-Za-z0-9_.-]*)?$")


class Params(BaseModel):
    """Base for the options a component accepts in a spec: frozen, strict, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class NoParams(Params):
    """For components that take no options."""


@dataclass(frozen=True, kw_only=True)
class ComponentDef:
    """What every registered component has. `plugin` is filled in by the registry."""

    name: str
    build: Callable[..., Any]
    params: type[Params] = NoParams
    description: str = ""
    plugin: str = ""

    kind = "component"


@dataclass(frozen=True, kw_only=True)
class LayerDef(ComponentDef):
    """A model layer. `build(params) -> torch.nn.Module`.

    `out_features(params, in_features)` gives the layer's output width for the static shape check
    in `knightctl validate`, or raises ValueError when the input width does not fit; "same" (the
    default) means an elementwise layer, None means the width is unknown.
    """

    out_features: Callable[[Any, int], int | None] | Literal["same"] | None = "same"
    kind = "layer"


@dataclass(frozen=True, kw_only=True)
class LossDef(ComponentDef):
    """A loss. `build(params) -> torch.nn.Module` called as `loss(outputs, targets)`.

    `target` says what the targets must be: "binary" (0/1 as float, shape (N, 1)), "class"
    (class indices, int64, shape (N,)) or "real" (float, shaped like the outputs).
    """

    target: TargetKind = "real"
    kind = "loss"


@dataclass(frozen=True, kw_only=True)
class OptimizerDef(ComponentDef):
    """An optimizer. `build(parameters, lr, params) -> torch.optim.Optimizer`."""

    kind = "optimizer"


@dataclass(frozen=True, kw_only=True)
class SchedulerDef(ComponentDef):
    """A learning-rate scheduler stepped once per epoch. `build(optimizer, params, epochs)`."""

    kind = "scheduler"


@dataclass(frozen=True, kw_only=True)
class DatasetDef(ComponentDef):
    """A dataset. `build(params, base_dir, seed) -> TabularData` (CPU tensors).

    `n_features(params, base_dir)` gives the feature count for the static shape check, or None.
    Params validators can read `info.context["base_dir"]`, the spec file's folder.
    """

    n_features: Callable[[Any, Path], int | None] | None = None
    kind = "dataset"


KINDS: tuple[type[ComponentDef], ...] = (LayerDef, LossDef, OptimizerDef, SchedulerDef, DatasetDef)

OpLayerKind = Literal["elementwise", "halves"]


@dataclass(frozen=True, kw_only=True)
class OpDef:
    """A differentiable op a plugin offers: checked by `knightctl gradcheck`, usable as a layer.

    Required:
    - `name`: "namespace::op", the name specs and reports use.
    - `fn`: a callable on tensors: a `torch.library.custom_op`, an `autograd.Function`'s `apply`,
      or a plain differentiable function.
    - `sample_inputs(device, dtype)`: an iterable of argument tuples for `fn`, or of `Sample`s
      (positional and keyword arguments); arguments may be nested tuples, lists and dicts. Every
      floating-point tensor among them is an input gradients are checked against, unless some of
      a sample's tensors have `requires_grad=True`: then only those are, and the rest are constants
      (as in `torch.autograd.gradcheck`). Every floating-point tensor the op returns (nested too)
      is an output that is checked. Keep them away from points where the op is not differentiable.

    Optional (None means "detect it" where detection is possible):
    - `reference`: a pure-torch function computing the same forward, to compare against.
    - `atol`, `rtol`: tolerances in float64 for gradient and reference comparisons.
    - `max_order`: the highest derivative order the op supports (1: backward is not differentiable).
    - `forward_mode`: whether forward-mode AD (jvp) works.
    - `vmap`: whether `torch.vmap` batching works.
    - `surrogate_gradient`: why the backward deliberately differs from the true derivative
      (straight-through estimators, gradient reversal); numeric comparison is then not a verdict.
    - `differentiable`: False for an op with no derivative to check (its verdict is "n/a").
    - `nondet_tol`: how far two runs of the backward on the same inputs may differ (0: bit-equal).
    - `layer`: how a spec uses it as a layer: "elementwise" (`fn(x)`, the default), "halves" (the
      input's last dimension split in two, `fn(a, b)`, width halved, GLU style) or None (not a layer).
    - `params`: the keyword options a spec may give the layer; passed to `fn` as keyword arguments.
    """

    name: str
    fn: Callable[..., Any]
    sample_inputs: Callable[[Any, Any], Iterable[tuple[Any, ...]]]
    reference: Callable[..., Any] | None = None
    atol: float = 1e-5
    rtol: float = 1e-3
    max_order: int | None = None
    forward_mode: bool | None = None
    vmap: bool | None = None
    surrogate_gradient: str | None = None
    differentiable: bool = True
    nondet_tol: float = 0.0
    layer: OpLayerKind | None = "elementwise"
    params: type[Params] = NoParams
    description: str = ""
    plugin: str = ""

    kind = "op"

    @classmethod
    def from_opinfo(cls, info: Any, *, namespace: str = "opinfo", **changes: Any) -> OpDef:
        """The op a PyTorch `OpInfo` entry describes, named "namespace::name" (see plugins/opinfo.py)."""
        from knightctl.plugins.opinfo import from_opinfo  # imports torch, which this module does not

        return from_opinfo(cls, info, namespace=namespace, **changes)


def as_definition(value: object, *, plugin: str) -> object:
    """What a plugin passed to `register`, as a definition: an OpInfo entry (or anything of its
    shape) becomes the op it describes (`OpDef.from_opinfo`); anything else is left to `check`."""
    if isinstance(value, OpDef) or not (
        callable(getattr(value, "sample_inputs", None)) and callable(getattr(value, "op", None))
    ):
        return value
    try:
        return OpDef.from_opinfo(value)
    except PluginError as exc:
        raise PluginError(f"plugin {plugin!r}: {exc.message}", hint=exc.hint) from exc


def _halved_width(params: Any, in_features: int) -> int:
    if in_features % 2:
        raise ValueError(f"splits its input in two halves, so it needs an even width, not {in_features}")
    return in_features // 2


def _build_op_layer(op: OpDef, params: Params) -> Any:
    from knightctl.plugins.oplayers import OpLayer  # torch, which registering and validating never need

    return OpLayer(op, params.model_dump())


def op_layer(op: OpDef) -> LayerDef:
    """The layer a spec gets by naming an op under `model:` (`op.layer` says how it is applied)."""
    return LayerDef(
        name=op.name,
        build=partial(_build_op_layer, op),
        params=op.params,
        out_features=_halved_width if op.layer == "halves" else "same",
        description=op.description or f"op {op.name}",
        plugin=op.plugin,
    )


Definition = ComponentDef | OpDef | MetricDef
_ALL_KINDS: tuple[type, ...] = (*KINDS, OpDef, MetricDef)


class Registry:
    """Names -> definitions, per kind, remembering which plugin registered each."""

    def __init__(self) -> None:
        self._defs: dict[str, dict[str, Any]] = {cls.kind: {} for cls in _ALL_KINDS}
        self.plugins: list[str] = []
        self.failed: list[str] = []  # "name (error)" for plugins that did not load

    def check(self, definition: object, *, plugin: str) -> None:
        """Refuse a definition that is not one, has a bad name, or lacks what its kind needs."""
        if not isinstance(definition, _ALL_KINDS):
            kinds = ", ".join(cls.__name__ for cls in _ALL_KINDS)
            shown = repr(definition)
            shown = shown if len(shown) <= 100 else shown[:97] + "..."  # a dataclass's repr can run to pages
            raise PluginError(f"plugin {plugin!r} registered {shown}, which is not one of {kinds}")
        what = f"plugin {plugin!r}: {definition.kind} {definition.name!r}"
        if not isinstance(definition.name, str) or not _NAME.match(definition.name):
            raise PluginError(f"{what}: names are letters, digits, '_', '.', '-', optionally as 'namespace::name'")
        if not (isinstance(definition.params, type) and issubclass(definition.params, BaseModel)):
            raise PluginError(f"{what} has params that are not a pydantic model")
        if isinstance(definition, OpDef):
            if "::" not in definition.name:
                raise PluginError(f"{what}: op names are 'namespace::name', e.g. 'mylab::{definition.name}'")
            for field in ("fn", "sample_inputs"):
                if not callable(getattr(definition, field)):
                    raise PluginError(f"{what}: {field} is not callable")
            if definition.layer not in ("elementwise", "halves", None):
                raise PluginError(f"{what}: layer is {definition.layer!r}; use 'elementwise', 'halves' or None")
        if isinstance(definition, MetricDef):
            check_metric(definition, what)

    def metrics(self) -> list[MetricDef]:
        """Every registered metric, by name."""
        return [self._defs["metric"][name] for name in self.names("metric")]

    def add(self, definition: Definition, *, plugin: str) -> None:
        """Record `definition` as registered by `plugin`; refuse bad ones and duplicates."""
        self.check(definition, plugin=plugin)
        definition = replace(definition, plugin=plugin)
        derived = op_layer(definition) if isinstance(definition, OpDef) and definition.layer else None
        for entry in (definition, derived):
            existing = self._defs[entry.kind].get(entry.name) if entry else None
            if existing is not None:
                raise PluginError(
                    f"the {entry.kind} {entry.name!r} is registered twice: by plugin {existing.plugin!r} and by plugin "
                    f"{plugin!r}",
                    hint="disable one of the two plugins (--disable-plugin NAME) or rename the component",
                )
        for entry in (definition, derived):
            if entry is not None:
                self._defs[entry.kind][entry.name] = entry

    def get(self, kind: str, name: str) -> Any:
        """The definition of `name`, or None."""
        return self._defs[kind].get(name)

    def names(self, kind: str) -> list[str]:
        """Sorted names registered for `kind`."""
        return sorted(self._defs[kind])

    def ops(self) -> list[OpDef]:
        """Every registered op, by name."""
        return [self._defs["op"][name] for name in self.names("op")]

    def unknown_name_message(self, kind: str, name: object) -> str:
        """Explain an unknown name: a suggestion, what exists, and which plugins were loaded (or failed)."""
        names = self.names(kind)
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        loaded = ", ".join(self.plugins) or "none"
        failed = f"; failed to load, so possibly the missing one: {'; '.join(self.failed)}" if self.failed else ""
        return (
            f"unknown {kind} {name!r}; {hint}available: {', '.join(names) or 'none'} (plugins loaded: {loaded}{failed})"
        )
