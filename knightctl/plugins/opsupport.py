"""What each registered op is and supports, for `knightctl ops`: declared where the plugin says so,
otherwise read off the op's form without running it (`knightctl gradcheck` is what runs it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from knightctl.plugins.catalog import Option, options_of
from knightctl.plugins.registry import OpDef
from knightctl.plugins.system import PluginSystem

Form = Literal["custom_op", "OpOverload", "OpOverloadPacket", "autograd.Function", "function"]
LIBRARY_FORMS: tuple[Form, ...] = ("custom_op", "OpOverload", "OpOverloadPacket")  # torch.library ops: opcheck runs
Support = Literal["yes", "no", "?"]  # "?": not declared and not visible from the form


@dataclass(frozen=True)
class OpSummary:
    """One row of `knightctl ops`."""

    name: str
    plugin: str
    origin: str
    form: Form
    layer: str  # "elementwise", "halves" or "-" (not usable as a layer)
    max_order: str  # "1", "2", ... or "?"
    forward_mode: Support
    vmap: Support
    devices: str  # "any", or the device types it has kernels for
    surrogate_gradient: str | None
    description: str
    options: tuple[Option, ...]  # the keyword options a spec may give it as a layer (OpDef.params)


def _custom_op_type() -> type | None:
    public = getattr(torch.library, "CustomOpDef", None)
    if public is not None:
        return public
    try:
        from torch._library.custom_ops import CustomOpDef  # torch < 2.5 kept it private
    except ImportError:
        return None
    return CustomOpDef


def _is_function_class(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, torch.autograd.Function)


def _function_class(fn: Any) -> type | None:
    """The autograd.Function subclass behind `fn`: `SomeFunction.apply` itself, or a plain wrapper
    (usually there to give the op keyword arguments and defaults) that calls one.
    """
    owner = getattr(fn, "__self__", None)
    if _is_function_class(owner):
        return owner
    code, names = getattr(fn, "__code__", None), getattr(fn, "__globals__", {})
    called = {names.get(name) for name in (code.co_names if code else ())}
    classes = [value for value in called if _is_function_class(value)]
    return classes[0] if len(classes) == 1 else None


def form_of(fn: Any) -> Form:
    """What kind of callable an op is: a custom_op, a torch.ops overload (one, or the packet of
    them: ops defined with `torch.library.Library`/`define`, or a custom_op reached through
    `torch.ops.ns.name`), an autograd.Function (or a wrapper of one), or a plain function."""
    custom_op = _custom_op_type()
    if custom_op is not None and isinstance(fn, custom_op):
        return "custom_op"
    # torch.ops.ns.op is an OpOverloadPacket and .default an OpOverload; torch has no public name
    # for the packet's class, so both are read from torch._ops, where torch.library gets them too.
    if isinstance(fn, torch._ops.OpOverload):
        return "OpOverload"
    if isinstance(fn, torch._ops.OpOverloadPacket):
        return "OpOverloadPacket"
    return "autograd.Function" if _function_class(fn) is not None else "function"


def _overrides(cls: type, method: str) -> bool:
    return getattr(cls, method) is not getattr(torch.autograd.Function, method)


def _forward_mode(op: OpDef, form: Form) -> Support:
    if op.forward_mode is not None:
        return "yes" if op.forward_mode else "no"
    if form == "autograd.Function":
        return "yes" if _overrides(_function_class(op.fn), "jvp") else "no"  # type: ignore[arg-type]
    return "?"


def _vmap(op: OpDef, form: Form) -> Support:
    if op.vmap is not None:
        return "yes" if op.vmap else "no"
    if form == "autograd.Function":
        cls = _function_class(op.fn)
        return "yes" if getattr(cls, "generate_vmap_rule", False) or _overrides(cls, "vmap") else "no"  # type: ignore[arg-type]
    return "?"


def _devices(op: OpDef, form: Form) -> str:
    if form in ("OpOverload", "OpOverloadPacket"):
        return "?"  # its kernels live in the dispatcher, which has no public per-device listing
    if form != "custom_op":
        return "any"
    kernels = getattr(op.fn, "_backend_fns", {None: None})  # device type -> kernel; None: every device
    return "any" if None in kernels else ", ".join(sorted(str(key) for key in kernels))


def summarise_ops(system: PluginSystem) -> list[OpSummary]:
    """Every registered op, by name, with what it supports."""
    rows = []
    for op in system.registry.ops():
        form = form_of(op.fn)
        info = system.info(op.plugin)
        rows.append(
            OpSummary(
                name=op.name,
                plugin=op.plugin,
                origin=info.origin if info else "",
                form=form,
                layer=op.layer or "-",
                max_order=str(op.max_order) if op.max_order is not None else "?",
                forward_mode=_forward_mode(op, form),
                vmap=_vmap(op, form),
                devices=_devices(op, form),
                surrogate_gradient=op.surrogate_gradient,
                description=op.description,
                options=options_of(op.params),
            )
        )
    return rows
