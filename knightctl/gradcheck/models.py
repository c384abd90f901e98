"""A spec's whole model, with its loss, checked like an op: d loss / d (inputs, every parameter).

The model is built as `train` builds it, copied to float64, and called through
`torch.func.functional_call` so that its parameters are ordinary arguments of one function.
"""

from __future__ import annotations

import copy
import time

import torch
from torch.func import functional_call

from knightctl.gradcheck.derivatives import reverse
from knightctl.gradcheck.jacobian import Target
from knightctl.gradcheck.report import OpReport
from knightctl.plugins.system import PluginSystem
from knightctl.spec.model import ExperimentSpec
from knightctl.training.build import build_components

MODEL_ROWS = 8  # training rows the loss is taken over: enough to cover every path, small enough to be exact


def check_model(
    spec: ExperimentSpec,
    system: PluginSystem,
    *,
    device: str = "cpu",
    atol: float = 1e-5,
    rtol: float = 1e-3,
    method: str = "auto",
) -> OpReport:
    """Reverse mode of loss(model(x), y) w.r.t. x and each parameter, against finite differences."""
    started = time.perf_counter()
    note = ""
    if device == "mps":
        device, note = "cpu", "MPS has no float64: checked on the CPU"
    target_device = torch.device(device)
    parts = build_components(spec, system.registry, target_device, spec.seed or 0)
    model = copy.deepcopy(parts.model).to(dtype=torch.float64).eval()
    loss_fn = parts.loss_fn.to(dtype=torch.float64)
    x = parts.data.train_x[:MODEL_ROWS].to(torch.float64)
    y = parts.data.train_y[:MODEL_ROWS]
    y = y.to(torch.float64) if y.is_floating_point() else y
    names = [name for name, _ in model.named_parameters()]

    def loss_of(inputs: torch.Tensor, *parameters: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, dict(zip(names, parameters, strict=True)), (inputs,)), y)

    parameters = tuple(p.detach() for p in model.parameters())
    target = Target(loss_of, (x, *parameters), tuple(range(1 + len(parameters))), vmap_ok=False, names=("x", *names))
    report = OpReport(
        f"model {spec.name}",
        "",
        device,
        note=note or f"inputs: x (first {len(x)} training rows), then {', '.join(names)}",
    )
    result, tally = reverse("reverse", [target], atol, rtol, method)
    report.checks.append(result)
    report.kinks.extend(tally.kinks.values())
    report.seconds = time.perf_counter() - started
    return report
