"""Arguments and outputs as pytrees: nested tuples, lists and dicts flattened to leaves and back.

An op may take `torch.cat`-style lists of tensors, keyword arguments and nested containers, and
return lists or dicts; the checker differentiates every floating-point tensor leaf of the inputs
and checks every floating-point tensor leaf of the outputs. Written here (twenty lines) rather
than taken from `torch.utils._pytree`, which is private.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Rebuild = Callable[[Sequence[Any]], Any]


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def flatten(tree: Any, path: str = "") -> tuple[list[Any], Rebuild, list[str]]:
    """The leaves of `tree` in order, a function rebuilding the tree from new leaves, and each leaf's path."""
    if isinstance(tree, dict):
        keys = list(tree)
        parts = [flatten(tree[key], f"{path}[{key!r}]") for key in keys]
        return _join(parts, lambda children: dict(zip(keys, children, strict=True)))
    if isinstance(tree, (tuple, list)):
        parts = [flatten(child, f"{path}[{i}]") for i, child in enumerate(tree)]
        kind = type(tree)
        if _is_namedtuple(tree):
            return _join(parts, lambda children: kind(*children))
        return _join(parts, kind)
    return [tree], lambda leaves: leaves[0], [path]


def _join(
    parts: list[tuple[list[Any], Rebuild, list[str]]], build: Callable[[list[Any]], Any]
) -> tuple[list[Any], Rebuild, list[str]]:
    sizes = [len(leaves) for leaves, _, _ in parts]
    leaves = [leaf for part, _, _ in parts for leaf in part]
    names = [name for _, _, part in parts for name in part]

    def rebuild(values: Sequence[Any]) -> Any:
        children, start = [], 0
        for (_, child_rebuild, _), size in zip(parts, sizes, strict=True):
            children.append(child_rebuild(values[start : start + size]))
            start += size
        return build(children)

    return leaves, rebuild, names
