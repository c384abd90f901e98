"""Lazy package exports: a package names its public API in its `__init__` without importing it.

Importing `knightctl.tracking.stores` runs `knightctl/tracking/__init__.py` first; if that
imported every module it exports from, one small import would pull in mlflow, torch and the rest
of the package. Each `__init__` instead maps its public names to the modules that define them,
and a name is imported the first time it is read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """`__getattr__`, `__dir__` and `__all__` for `package`, whose `exports` map name -> submodule."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        setattr(importlib.import_module(package), name, value)  # read once, then a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)
