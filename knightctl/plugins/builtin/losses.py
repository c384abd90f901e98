"""Built-in losses, each declaring the target format it needs (see `LossDef.target`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from knightctl.plugins.hookspecs import hookimpl
from knightctl.plugins.registry import LossDef, NoParams, Params


class BceParams(Params):
    pos_weight: float | None = Field(None, gt=0.0, description="weight of positive examples")


class CrossEntropyParams(Params):
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="share of each target's probability spread evenly over the classes"
    )


class HuberParams(Params):
    delta: float = Field(1.0, gt=0.0, description="where the loss turns from quadratic to linear, in target units")


def _build_bce(params: BceParams) -> Any:
    import torch
    import torch.nn as nn

    if params.pos_weight is None:
        return nn.BCEWithLogitsLoss()
    return nn.BCEWithLogitsLoss(pos_weight=torch.tensor([params.pos_weight]))


def _build_cross_entropy(params: CrossEntropyParams) -> Any:
    import torch.nn as nn

    return nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)


def _build_plain(class_name: str) -> Any:
    def build(params: Params) -> Any:
        import torch.nn as nn

        return getattr(nn, class_name)(**params.model_dump())

    return build


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register(
        LossDef(
            name="bce_with_logits",
            build=_build_bce,
            params=BceParams,
            target="binary",
            description="binary cross-entropy on logits (torch.nn.BCEWithLogitsLoss)",
        )
    )
    register(
        LossDef(
            name="cross_entropy",
            build=_build_cross_entropy,
            params=CrossEntropyParams,
            target="class",
            description="multi-class cross-entropy on logits (torch.nn.CrossEntropyLoss)",
        )
    )
    register(
        LossDef(
            name="mse", build=_build_plain("MSELoss"), params=NoParams, target="real", description="mean squared error"
        )
    )
    register(
        LossDef(
            name="l1", build=_build_plain("L1Loss"), params=NoParams, target="real", description="mean absolute error"
        )
    )
    register(
        LossDef(
            name="huber", build=_build_plain("HuberLoss"), params=HuberParams, target="real", description="Huber loss"
        )
    )
