"""Test plugin: ops that fail in the ways docs/faults.md lists (rows 12 and 15)."""

import torch

from knightctl import OpDef, hookimpl


def explodes(x):
    raise ValueError("the forward of this op always fails")


class _BadBackward(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x * 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise ArithmeticError("the backward of this op always fails")


@torch.library.custom_op("faulty::cuda_only", mutates_args=(), device_types="cuda")
def cuda_only(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


def _samples(device, dtype):
    return [(torch.linspace(-1, 1, 5, device=device, dtype=dtype),)]


@hookimpl
def register_ops(register):
    register(OpDef(name="faulty::explodes", fn=explodes, sample_inputs=_samples))
    register(OpDef(name="faulty::bad_backward", fn=_BadBackward.apply, sample_inputs=_samples))
    register(OpDef(name="faulty::cuda_only", fn=cuda_only, sample_inputs=_samples))
