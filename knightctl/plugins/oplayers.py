"""Ops as layers: the module a spec gets when it names an op under `model:`.

"elementwise" ops are applied as `fn(x, **options)`; "halves" ops take the input's last dimension
split in two, `fn(a, b, **options)` (a gated unit like GLU), and halve the width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn


class _Op(Protocol):
    """What a layer needs of its `OpDef` (registry.py, which imports this module when it builds one)."""

    @property
    def name(self) -> str: ...

    @property
    def plugin(self) -> str: ...

    @property
    def layer(self) -> str | None: ...

    @property
    def fn(self) -> Callable[..., Any]: ...


class OpLayer(nn.Module):
    """Applies a registered op; its options are the ones the spec gave (validated by `op.params`)."""

    def __init__(self, op: _Op, options: dict[str, Any]) -> None:
        super().__init__()
        self.op_name = op.name
        self.plugin = op.plugin
        self.halves = op.layer == "halves"
        self.options = options
        self._fn = _Shared(op.fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.halves:
            first, second = x.chunk(2, dim=-1)
            return self._fn.fn(first, second, **self.options)
        return self._fn.fn(x, **self.options)

    def extra_repr(self) -> str:
        options = "".join(f", {key}={value!r}" for key, value in self.options.items())
        return f"{self.op_name}{options}"


class _Shared:
    """Holds the op's callable so copies of the model share it: a custom op cannot be duplicated."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self
