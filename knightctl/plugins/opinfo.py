"""OpInfo entries as knightctl ops: `OpDef.from_opinfo(info)`, and `register(info)` in `register_ops`.

A project that already describes its ops with PyTorch's `OpInfo` (the test-suite dataclass in
`torch.testing._internal.opinfo.core`) checks them with knightctl unchanged. That module is
private and needs `expecttest`, so nothing here imports it: an entry is read by its attributes
(`name`, `op`, `sample_inputs(device, dtype, requires_grad=...)` and the `supports_*` flags), and
a look-alike with those attributes works too.

What is read, and how:
- the samples: `sample_inputs(device, float64, requires_grad=True)`, each `SampleInput`'s input,
  args and kwargs as a `Sample`; only the tensors it marks `requires_grad` are differentiated, and
  its `output_process_fn_grad` picks the outputs that are checked, as in torch's own gradcheck tests;
- `gradcheck_wrapper`, where it is not the default, wraps the op;
- `supports_autograd=False` -> declared not differentiable ("n/a");
  `supports_gradgrad` -> derivatives claimed up to order 2, or only order 1;
  `supports_forward_ad` -> forward mode claimed or not; `check_batched_grad` -> vmap claimed or not;
  `gradcheck_nondet_tol` -> `nondet_tol`.
- Not read: `ref` (a NumPy reference in torch's convention; knightctl's `reference` is a torch
  function, so pass one with `reference=`), and `skips`/`decorators`, which name torch's test classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from knightctl.errors import PluginError
from knightctl.plugins.sample import Sample

Op = TypeVar("Op")  # OpDef, which imports this module on first use

DEFAULT_NAMESPACE = "opinfo"  # for entries whose name has no "namespace::" of its own


def from_opinfo(op_class: Callable[..., Op], info: Any, *, namespace: str = DEFAULT_NAMESPACE, **changes: Any) -> Op:
    """The `op_class` (`OpDef`) that checks what the OpInfo entry `info` describes; `changes` set
    any of its fields. Called as `OpDef.from_opinfo(info)`, which passes the class."""
    name = _name(info, namespace)
    where = f"OpInfo {getattr(info, 'name', info)!r}"
    if not callable(getattr(info, "op", None)) or not callable(getattr(info, "sample_inputs", None)):
        raise PluginError(f"{where} has no callable `op` and `sample_inputs`; is it an OpInfo?")
    dtypes = getattr(info, "dtypes", None)
    if dtypes is not None and torch.float64 not in dtypes:
        raise PluginError(
            f"{where} does not list torch.float64 among its dtypes, and gradients are checked in float64",
            hint="add torch.float64 to the entry's dtypes",
        )
    fields: dict[str, Any] = {
        "name": name,
        "fn": _op(info),
        "sample_inputs": _SampleInputs(info),
        "differentiable": bool(getattr(info, "supports_autograd", True)),
        "max_order": _max_order(getattr(info, "supports_gradgrad", None)),
        "forward_mode": _claim(getattr(info, "supports_forward_ad", None)),
        "vmap": _claim(getattr(info, "check_batched_grad", None)),
        "nondet_tol": float(getattr(info, "gradcheck_nondet_tol", 0.0) or 0.0),
        "layer": None,  # an OpInfo says nothing about how a model would use the op
        "description": f"from OpInfo {info.name!r}"
        + (f" ({info.variant_test_name})" if getattr(info, "variant_test_name", "") else ""),
    }
    fields.update(changes)
    return op_class(**fields)


def _name(info: Any, namespace: str) -> str:
    base = str(getattr(info, "name", "") or "")
    if not base:
        raise PluginError(f"the OpInfo {info!r} has no name")
    variant = str(getattr(info, "variant_test_name", "") or "")
    full = f"{base}.{variant}" if variant else base
    return full if "::" in full else f"{namespace}::{full}"


def _claim(value: Any) -> bool | None:
    """An OpInfo flag as a claim knightctl holds the op to; None (detect it) where it was not set."""
    return value if isinstance(value, bool) else None


def _max_order(gradgrad: Any) -> int | None:
    """Second derivatives claimed (order 2), disclaimed (order 1), or left to detect."""
    return None if not isinstance(gradgrad, bool) else 2 if gradgrad else 1


def _op(info: Any) -> Any:
    """`info.op`, called through the entry's `gradcheck_wrapper` when it has one of its own."""
    op, wrapper = info.op, getattr(info, "gradcheck_wrapper", None)
    default = getattr(type(info), "gradcheck_wrapper", None)  # the dataclass default lives on the class
    if wrapper is None or wrapper is default:
        return op  # unwrapped, so a torch.library op is still one and opcheck runs on it

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return wrapper(op, *args, **kwargs)

    wrapped.__name__ = getattr(op, "__name__", "op")
    return wrapped


class _SampleInputs:
    """`OpDef.sample_inputs` for an OpInfo entry: its samples, with the gradients they ask for."""

    def __init__(self, info: Any) -> None:
        self.info = info

    def __call__(self, device: Any, dtype: torch.dtype) -> Iterator[Sample]:
        for given in self.info.sample_inputs(device, dtype, requires_grad=True):
            sample = Sample(given.input, *given.args, **given.kwargs)
            sample.select_output = getattr(given, "output_process_fn_grad", None)
            yield sample
