"""knight::sigmoid_gate: x * sigmoid(y), a two-input gate, as a `torch.library.custom_op`.

Used as a layer it splits its input in two halves, a value half x and a gate half y (GLU style).

The lesson: a custom op is opaque to PyTorch's tracing systems, so it has to describe itself.
- `register_fake` says what the output looks like (shape, dtype, device) without computing it;
  torch.compile and torch.export (which MLflow model logging uses) trace with such fake tensors.
- `register_autograd` gives the backward. Written with differentiable torch ops on the saved
  inputs, it can be differentiated again, so second-order derivatives work.
- `register_vmap` gives a batching rule; without one torch.vmap still works, but through a slow
  per-sample fallback that warns about it.
What `register_autograd` does not give is forward-mode AD: in torch 2.13 a forward-mode tangent
through this op comes back as None (torch.func.jvp: zeros), silently. Hence forward_mode=False.
torch.func's grad, jacrev and hessian refuse the op too (its generated autograd.Function has no
setup_context); torch.autograd.grad, and torch.vmap of the forward, work.
"""

from __future__ import annotations

import torch

from knightctl import OpDef, hookimpl


@torch.library.custom_op("knight::sigmoid_gate", mutates_args=())
def sigmoid_gate(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(y), for x and y of the same shape."""
    if x.shape != y.shape:
        raise ValueError(f"knight::sigmoid_gate needs inputs of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return x * torch.sigmoid(y)


@sigmoid_gate.register_fake
def _(x, y):
    # Metadata only: the output is shaped like x. torch._check records the same-shape rule for
    # the tracer (a symbolic shape cannot be compared with `if`).
    torch._check(x.shape == y.shape, lambda: "knight::sigmoid_gate needs inputs of one shape")
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, y = inputs
    # Save inputs, not intermediates: under create_graph=True they are the graph's own leaves,
    # so autograd can differentiate the backward below with respect to them.
    ctx.save_for_backward(x, y)


def _backward(ctx, grad):
    x, y = ctx.saved_tensors
    s = torch.sigmoid(y)
    grad_x = grad * s if ctx.needs_input_grad[0] else None
    grad_y = grad * x * s * (1 - s) if ctx.needs_input_grad[1] else None
    return grad_x, grad_y


sigmoid_gate.register_autograd(_backward, setup_context=_setup_context)


@sigmoid_gate.register_vmap
def _(info, in_dims, x, y):
    # Elementwise, so one call on the whole batch is right once both inputs carry the batch in
    # the same place: move it to the front, expanding an input that is not batched.
    x_dim, y_dim = in_dims
    x = x.movedim(x_dim, 0) if x_dim is not None else x.expand(info.batch_size, *x.shape)
    y = y.movedim(y_dim, 0) if y_dim is not None else y.expand(info.batch_size, *y.shape)
    return sigmoid_gate(x, y), 0


def reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(y)


def sample_inputs(device, dtype):
    gen = torch.Generator().manual_seed(0)
    for shape in [(7,), (3, 4), (2, 3, 2)]:
        x, y = (2 * torch.randn(2, *shape, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype)
        yield (x, y)


@hookimpl
def register_ops(register):
    register(
        OpDef(
            name="knight::sigmoid_gate",
            fn=sigmoid_gate,
            sample_inputs=sample_inputs,
            reference=reference,
            max_order=2,  # the registered backward is made of differentiable torch ops
            forward_mode=False,  # register_autograd gives no jvp: tangents come back None
            vmap=True,  # register_vmap above
            layer="halves",
            description="x * sigmoid(y) as a torch.library custom op (compile and export ready)",
        )
    )
