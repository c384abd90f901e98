"""The data section checked against the task: `data.split.stratify` needs classes and a validation split.

Torch-free, for `knightctl validate`; the structural pass reports a `data.split` of the wrong shape.
"""

from __future__ import annotations

from typing import Any

from knightctl.plugins.registry import Registry
from knightctl.spec.problems import Problem


def split_problems(raw: dict[str, Any], registry: Registry) -> list[Problem]:
    """A stratified split for a regression loss, or without a validation split, at `data.split.stratify`."""
    data = raw.get("data")
    split = data.get("split") if isinstance(data, dict) else None
    if not isinstance(split, dict) or split.get("stratify") is not True:
        return []
    assert isinstance(data, dict)
    where = ("data", "split", "stratify")
    if data.get("val_fraction") == 0:
        return [Problem(where, "stratify holds out each class's share for validation, and data.val_fraction is 0")]
    loss = raw.get("loss", {})
    loss_name = loss.get("name") if isinstance(loss, dict) else loss
    loss_def = registry.get("loss", loss_name) if isinstance(loss_name, str) else None
    if loss_def is not None and loss_def.target == "real":
        return [
            Problem(
                where,
                f"stratify keeps each class's share in the validation split, and loss {loss_name!r} is a regression "
                "loss, whose targets have no classes; set it to false",
            )
        ]
    return []
