"""`Sample`: one sample input of an op, positional and keyword arguments, for the gradient checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Sample:
    """One sample input of an op: positional and keyword arguments, each any pytree (tuples, lists,
    dicts, nested) of tensors and other values. `sample_inputs` may yield these or plain tuples.

    `select_output`, where set, maps the op's output to the part whose gradients are checked (the
    rest is not differentiable or not of interest), as OpInfo's `output_process_fn_grad` does.
    """

    select_output: Callable[[Any], Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"Sample({', '.join(parts)})"
