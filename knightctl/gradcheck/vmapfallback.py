"""torch.vmap's per-sample fallback for a torch.library op without a batching rule, told once per op
per process in one line instead of torch's own warning at every call.

Under `torch.vmap` (knightctl's batched check, and the batched evaluations of its Jacobians), an op
with no batching rule runs once per sample, which is correct, only slower. torch says so from C++
(BatchedFallback.cpp) straight to stderr, at every call and beyond the reach of Python's warnings
filters: several lines each time `train`'s pre-flight or `gradcheck` checks such an op. While
knightctl vmaps one, it switches that message off and warns `VmapFallbackWarning` once per op
instead, which the filters do reach. Its message starts "vmap fallback:", so that
`PYTHONWARNINGS="ignore:vmap fallback"` silences it from the shell (a `-W` category outside the
standard library is looked up before site-packages are importable, so it cannot be named there);
in Python, `warnings.filterwarnings("ignore", category=knightctl.VmapFallbackWarning)`.

Only an op that is itself a torch.library op (a `custom_op`, or a `torch.ops` overload) is
recognised; a plain function calling one keeps torch's message.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from knightctl.errors import VmapFallbackWarning

_told: set[str] = set()  # the ops warned about in this process


def library_op_name(fn: Any) -> str | None:
    """The dispatcher's name of `fn` ("ns::op", "ns::op.overload") if it is a torch.library op, else None."""
    import torch

    custom_op = getattr(torch.library, "CustomOpDef", None)
    if custom_op is not None and isinstance(fn, custom_op):
        return fn._qualname  # torch has no public name for it
    if isinstance(fn, torch._ops.OpOverload):  # the same classes opsupport.form_of tells apart
        return fn.name()
    if isinstance(fn, torch._ops.OpOverloadPacket):
        return fn._qualified_op_name
    return None


def unbatched_op(fn: Any) -> str | None:
    """The name of the torch.library op `fn` is, if it has no batching rule of its own (torch.vmap
    then loops over it); None for anything else. A composite kernel does not count: torch falls back
    on those too."""
    import torch

    name = library_op_name(fn)
    if name is None:
        return None
    try:
        batched = torch._C._dispatch_has_kernel_for_dispatch_key(name, "FuncTorchBatched")
    except RuntimeError:  # not in the dispatcher under that name: nothing to say
        return None
    return None if batched else name


def _one_line(original: Any) -> Any:
    def formatwarning(
        message: Any, category: type[Warning], filename: str, lineno: int, line: str | None = None
    ) -> str:
        if issubclass(category, VmapFallbackWarning):
            return f"warning: {message}\n"  # no file and source line: the place is knightctl's, not the user's
        return original(message, category, filename, lineno, line)

    formatwarning.knightctl_one_line = True  # type: ignore[attr-defined]
    return formatwarning


def _tell(name: str) -> None:
    if name in _told:
        return
    _told.add(name)
    if not getattr(warnings.formatwarning, "knightctl_one_line", False):
        warnings.formatwarning = _one_line(warnings.formatwarning)
    warnings.warn(
        VmapFallbackWarning(
            f"vmap fallback: {name} has no batching rule, so torch.vmap runs it once per sample (correct, only "
            f"slower; knightctl's batched check and Jacobians vmap it): register one with torch.library.register_vmap "
            f"to speed it up; PYTHONWARNINGS='ignore:vmap fallback' silences this"
        ),
        stacklevel=1,  # filtered by this module's name; shown without a place (see _one_line)
    )


@contextmanager
def fallback_told(name: str | None) -> Iterator[None]:
    """Around a torch.vmap of the op `name` (from `unbatched_op`; None: a no-op): torch's own
    warning off, and once it ran, ours, once per op per process."""
    if name is None:
        yield
        return
    import torch

    switch = getattr(torch._C._functorch, "_set_vmap_fallback_warning_enabled", None)
    if switch is not None:
        switch(False)
    try:
        yield
    finally:
        if switch is not None:
            switch(True)  # torch's default; it has no getter to read a user's own setting back
    _tell(name)
