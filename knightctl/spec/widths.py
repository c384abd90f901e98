"""Static width check of a spec's layer chain, without torch: dataset features -> layers -> loss.

It catches the common mistakes (`in_features` that does not match the previous layer, a binary
loss after a layer with several outputs) at `knightctl validate` time. It stops at the first layer
whose width it cannot know; the dry forward before training checks everything for real.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from knightctl.plugins.registry import DatasetDef, LayerDef, LossDef, Registry
from knightctl.spec.problems import Problem


class _Component(Protocol):
    """A spec's data or loss entry, as `spec.model` defines them (not imported: it imports this)."""

    @property
    def name(self) -> str: ...

    def options(self) -> dict[str, Any]: ...


class _Layer(Protocol):
    @property
    def type(self) -> str: ...

    def options(self) -> dict[str, Any]: ...


class _Spec(Protocol):
    """What the width check reads of an `ExperimentSpec`."""

    @property
    def data(self) -> _Component: ...

    @property
    def model(self) -> Sequence[_Layer]: ...

    @property
    def loss(self) -> _Component: ...


def static_width_problems(spec: _Spec, registry: Registry, base_dir: Path) -> list[Problem]:
    """Problems in the layer chain's widths, each naming the layer index and its type."""
    context = {"base_dir": base_dir}
    dataset = registry.get("dataset", spec.data.name)
    assert isinstance(dataset, DatasetDef)
    width = (
        dataset.n_features(dataset.params.model_validate(spec.data.options(), context=context), base_dir)
        if dataset.n_features
        else None
    )
    for index, layer in enumerate(spec.model):
        if width is None:
            return []
        definition = registry.get("layer", layer.type)
        assert isinstance(definition, LayerDef)
        if definition.out_features == "same":
            continue
        if definition.out_features is None:
            return []
        try:
            width = definition.out_features(definition.params.model_validate(layer.options(), context=context), width)
        except ValueError as exc:
            return [Problem(("model", index), f"layer {index} ({layer.type}) {exc}")]
    loss = registry.get("loss", spec.loss.name)
    assert isinstance(loss, LossDef)
    if loss.target == "binary" and width is not None and width != 1:
        last = len(spec.model) - 1
        return [
            Problem(
                ("model", last),
                f"the model ends with width {width}, but {spec.loss.name} needs exactly one output per example",
            )
        ]
    return []
