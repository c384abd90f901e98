"""Component definitions (what a plugin registers) and the name -> definition registry.

Nothing here imports torch: `knightctl validate` resolves every name and checks every option of a
spec against this registry without paying for torch. Only `build` callables touch torch, when a
run actually builds its model.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict

from knightctl.errors import PluginError

if TYPE_CHECKING:
    from pathlib import Path

TargetKind = Literal["binary", "class", "real"]

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


class Registry:
    """Names -> definitions, per kind, remembering which plugin registered each."""

    def __init__(self) -> None:
        self._defs: dict[str, dict[str, ComponentDef]] = {cls.kind: {} for cls in KINDS}
        self.plugins: list[str] = []

    def add(self, definition: ComponentDef, *, plugin: str) -> None:
        """Record `definition` as registered by `plugin`; refuse bad names and duplicates."""
        if not isinstance(definition, KINDS):
            raise PluginError(
                f"plugin {plugin!r} registered {definition!r}, which is not one of "
                + ", ".join(cls.__name__ for cls in KINDS)
            )
        if not _NAME.match(definition.name):
            raise PluginError(
                f"plugin {plugin!r} registered the {definition.kind} name {definition.name!r}; names are "
                "letters, digits, '_', '.', '-', optionally as 'namespace::name'"
            )
        if not (isinstance(definition.params, type) and issubclass(definition.params, BaseModel)):
            raise PluginError(f"plugin {plugin!r}: {definition.kind} {definition.name!r} has params that are not a pydantic model")
        table = self._defs[definition.kind]
        existing = table.get(definition.name)
        if existing is not None:
            raise PluginError(
                f"the {definition.kind} {definition.name!r} is registered twice: "
                f"by plugin {existing.plugin!r} and by plugin {plugin!r}",
                hint="disable one of the two plugins or rename the component",
            )
        table[definition.name] = replace(definition, plugin=plugin)

    def get(self, kind: str, name: str) -> ComponentDef | None:
        """The definition of `name`, or None."""
        return self._defs[kind].get(name)

    def names(self, kind: str) -> list[str]:
        """Sorted names registered for `kind`."""
        return sorted(self._defs[kind])

    def unknown_name_message(self, kind: str, name: object) -> str:
        """Explain an unknown name: a suggestion, what exists, and which plugins were loaded."""
        names = self.names(kind)
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        loaded = ", ".join(self.plugins) or "none"
        return f"unknown {kind} {name!r}; {hint}available: {', '.join(names) or 'none'} (plugins loaded: {loaded})"
