"""Import plugin files (a `*.py` in a plugin directory, or one a spec names) as modules, once each.

A file is executed at most once per process for a given content: executing it again would define
its `torch.library.custom_op`s a second time, which torch refuses. The module gets a private,
flat name in `sys.modules` (dataclasses, pickling and `torch.compile` look modules up there).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType

_imported: dict[tuple[Path, str], ModuleType] = {}


class PluginFileError(Exception):
    """A plugin file could not be read or executed; the message says why, in one line."""


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes, the identity MLflow records for a local plugin."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def import_plugin_file(path: Path) -> ModuleType:
    """Execute `path` as a module (or return the module its current content already made)."""
    resolved = path.resolve()
    try:
        source = resolved.read_bytes()
    except OSError as exc:
        raise PluginFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(source).hexdigest()
    module = _imported.get((resolved, digest))
    if module is not None:
        return module
    identifier = re.sub(r"\W", "_", resolved.stem)
    module_name = f"_knightctl_plugin_{identifier}_{digest[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    assert spec is not None and spec.loader is not None  # a .py path always has a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[module_name]
        if not isinstance(exc, Exception):
            raise  # Ctrl-C and SystemExit are not plugin bugs to report
        raise PluginFileError(describe_exception(exc, resolved)) from exc
    _imported[(resolved, digest)] = module
    return module


def describe_exception(exc: BaseException, within: Path | None) -> str:
    """`SyntaxError at line 3: invalid syntax`, or `KeyError at x.py:12: 'beta'` (the innermost line in `within`)."""
    if isinstance(exc, SyntaxError) and exc.lineno is not None:
        return f"SyntaxError at line {exc.lineno}: {exc.msg}"
    frames = traceback.extract_tb(exc.__traceback__)
    if within is not None:
        frames = [frame for frame in frames if Path(frame.filename) == within or within in Path(frame.filename).parents]
    if not frames:
        return f"{type(exc).__name__}: {exc}"
    last = frames[-1]
    where = (
        f"line {last.lineno}"
        if within is not None and within.is_file()
        else f"{Path(last.filename).name}:{last.lineno}"
    )
    return f"{type(exc).__name__} at {where}: {exc}"
