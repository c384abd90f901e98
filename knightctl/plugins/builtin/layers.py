"""Built-in layers: linear, normalisation, dropout, flatten and the common torch activations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from knightctl.plugins.hookspecs import hookimpl
from knightctl.plugins.registry import LayerDef, NoParams, Params


class LinearParams(Params):
    in_features: int = Field(gt=0, description="width of the layer's input")
    out_features: int = Field(gt=0, description="width of its output")
    bias: bool = Field(True, description="learn an additive bias b")


class DropoutParams(Params):
    p: float = Field(0.5, ge=0.0, lt=1.0, description="probability of zeroing an element")


class NormParams(Params):
    features: int = Field(gt=0, description="width of the layer's input")
    eps: float = Field(1e-5, gt=0.0, description="added to the variance, for numerical stability")


class LeakyReluParams(Params):
    negative_slope: float = Field(0.01, ge=0.0, description="slope for negative inputs")


class EluParams(Params):
    alpha: float = Field(1.0, gt=0.0, description="the output tends to -alpha for large negative inputs")


class GeluParams(Params):
    approximate: Literal["none", "tanh"] = Field("none", description="tanh: the tanh approximation; none: exact (erf)")


class SoftplusParams(Params):
    beta: float = Field(1.0, gt=0.0, description="sharpness: log(1 + exp(beta x)) / beta")
    threshold: float = Field(20.0, gt=0.0, description="linear where beta x exceeds it, for numerical stability")


def _build_linear(params: LinearParams) -> Any:
    import torch.nn as nn

    return nn.Linear(params.in_features, params.out_features, bias=params.bias)


def _linear_width(params: LinearParams, in_features: int) -> int:
    if params.in_features != in_features:
        raise ValueError(f"in_features is {params.in_features} but its input has width {in_features}")
    return params.out_features


def _torch_module(class_name: str, **fixed: Any) -> Any:
    """A builder that instantiates torch.nn.<class_name> with the params' fields as arguments."""

    def build(params: Params) -> Any:
        import torch.nn as nn

        return getattr(nn, class_name)(**fixed, **params.model_dump())

    return build


def _build_layer_norm(params: NormParams) -> Any:
    import torch.nn as nn

    return nn.LayerNorm(params.features, eps=params.eps)


def _build_batch_norm(params: NormParams) -> Any:
    import torch.nn as nn

    return nn.BatchNorm1d(params.features, eps=params.eps)


def _check_width(params: NormParams, in_features: int) -> int:
    if params.features != in_features:
        raise ValueError(f"expects inputs of width {params.features} but receives width {in_features}")
    return in_features


_ACTIVATIONS: tuple[tuple[str, str, type[Params]], ...] = (
    ("relu", "ReLU", NoParams),
    ("leaky_relu", "LeakyReLU", LeakyReluParams),
    ("elu", "ELU", EluParams),
    ("gelu", "GELU", GeluParams),
    ("silu", "SiLU", NoParams),
    ("mish", "Mish", NoParams),
    ("tanh", "Tanh", NoParams),
    ("sigmoid", "Sigmoid", NoParams),
    ("softplus", "Softplus", SoftplusParams),
    ("identity", "Identity", NoParams),
)


@hookimpl
def register_layers(register) -> None:  # type: ignore[no-untyped-def]
    register(
        LayerDef(
            name="linear",
            build=_build_linear,
            params=LinearParams,
            out_features=_linear_width,
            description="affine map y = x W^T + b (torch.nn.Linear)",
        )
    )
    register(
        LayerDef(name="dropout", build=_torch_module("Dropout"), params=DropoutParams, description="torch.nn.Dropout")
    )
    register(
        LayerDef(
            name="layer_norm",
            build=_build_layer_norm,
            params=NormParams,
            out_features=_check_width,
            description="torch.nn.LayerNorm over the last dimension",
        )
    )
    register(
        LayerDef(
            name="batch_norm",
            build=_build_batch_norm,
            params=NormParams,
            out_features=_check_width,
            description="torch.nn.BatchNorm1d",
        )
    )
    register(
        LayerDef(name="flatten", build=_torch_module("Flatten"), out_features=None, description="torch.nn.Flatten")
    )
    for name, class_name, params in _ACTIVATIONS:
        register(
            LayerDef(
                name=name,
                build=_torch_module(class_name),
                params=params,
                description=f"torch.nn.{class_name}, elementwise",
            )
        )
