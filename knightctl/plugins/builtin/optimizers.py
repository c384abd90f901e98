"""Built-in optimizers (Adam, AdamW, SGD, RMSprop) and per-epoch learning-rate schedulers."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from knightctl.plugins.hookspecs import hookimpl
from knightctl.plugins.registry import OptimizerDef, Params, SchedulerDef


class AdamParams(Params):
    betas: tuple[float, float] = Field(  # YAML gives a list
        (0.9, 0.999), strict=False, description="decay rates of the running means of the gradient and its square"
    )
    eps: float = Field(1e-8, gt=0.0, description="added to the denominator, for numerical stability")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty added to the gradient")
    amsgrad: bool = Field(False, description="divide by the running maximum of the squared-gradient mean (AMSGrad)")


class AdamWParams(AdamParams):
    weight_decay: float = Field(
        0.01, ge=0.0, description="decoupled weight decay: weights shrink by lr * this per step"
    )


class SgdParams(Params):
    momentum: float = Field(0.0, ge=0.0, description="momentum factor (0: plain SGD)")
    dampening: float = Field(0.0, ge=0.0, description="share of each new gradient held back from the momentum")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty added to the gradient")
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0 and dampening 0)")


class RmspropParams(Params):
    alpha: float = Field(0.99, gt=0.0, lt=1.0, description="decay rate of the running mean of the squared gradient")
    eps: float = Field(1e-8, gt=0.0, description="added to the denominator, for numerical stability")
    momentum: float = Field(0.0, ge=0.0, description="momentum factor")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty added to the gradient")


class StepParams(Params):
    step_size: int = Field(gt=0, description="epochs between decays")
    gamma: float = Field(0.1, gt=0.0, description="factor applied every step_size epochs")


class ExponentialParams(Params):
    gamma: float = Field(gt=0.0, description="factor applied every epoch")


class CosineParams(Params):
    t_max: int | None = Field(None, gt=0, description="epochs in one half-cosine; default: all epochs")
    eta_min: float = Field(0.0, ge=0.0, description="the lowest lr, reached after t_max epochs")


def _optimizer(class_name: str) -> Any:
    def build(parameters: Any, lr: float, params: Params) -> Any:
        import torch.optim

        return getattr(torch.optim, class_name)(parameters, lr=lr, **params.model_dump())

    return build


def _build_step(optimizer: Any, params: StepParams, epochs: int) -> Any:
    from torch.optim.lr_scheduler import StepLR

    return StepLR(optimizer, step_size=params.step_size, gamma=params.gamma)


def _build_exponential(optimizer: Any, params: ExponentialParams, epochs: int) -> Any:
    from torch.optim.lr_scheduler import ExponentialLR

    return ExponentialLR(optimizer, gamma=params.gamma)


def _build_cosine(optimizer: Any, params: CosineParams, epochs: int) -> Any:
    from torch.optim.lr_scheduler import CosineAnnealingLR

    return CosineAnnealingLR(optimizer, T_max=params.t_max or epochs, eta_min=params.eta_min)


@hookimpl
def register_optimizers(register) -> None:  # type: ignore[no-untyped-def]
    register(OptimizerDef(name="adam", build=_optimizer("Adam"), params=AdamParams, description="torch.optim.Adam"))
    register(
        OptimizerDef(
            name="adamw",
            build=_optimizer("AdamW"),
            params=AdamWParams,
            description="torch.optim.AdamW (decoupled weight decay)",
        )
    )
    register(OptimizerDef(name="sgd", build=_optimizer("SGD"), params=SgdParams, description="torch.optim.SGD"))
    register(
        OptimizerDef(
            name="rmsprop", build=_optimizer("RMSprop"), params=RmspropParams, description="torch.optim.RMSprop"
        )
    )


@hookimpl
def register_schedulers(register) -> None:  # type: ignore[no-untyped-def]
    register(
        SchedulerDef(
            name="step",
            build=_build_step,
            params=StepParams,
            description="multiply the lr by gamma every step_size epochs",
        )
    )
    register(
        SchedulerDef(
            name="exponential",
            build=_build_exponential,
            params=ExponentialParams,
            description="multiply the lr by gamma every epoch",
        )
    )
    register(
        SchedulerDef(
            name="cosine", build=_build_cosine, params=CosineParams, description="cosine annealing from lr to eta_min"
        )
    )
