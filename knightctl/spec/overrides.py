"""`--set PATH=VALUE` overrides, applied to a spec's plain data before it is validated.

Values are parsed as YAML with the spec's own rules, so types are kept (`5` an int, `1e-3` a
float, `full` a string). Paths reach into lists by index. A path that does not exist in the
schema is not refused here but by validation, which names the `--set` it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from knightctl.errors import SpecError
from knightctl.spec.file import Location, parse_yaml_value
from knightctl.spec.problems import dotted


def normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """Expand shorthands: `- relu` -> `- {type: relu}`, `loss: mse` -> `loss: {name: mse}`."""
    if isinstance(raw.get("model"), list):
        raw["model"] = [{"type": item} if isinstance(item, str) else item for item in raw["model"]]
    for section in ("loss", "data", "optimizer"):
        if isinstance(raw.get(section), str):
            raw[section] = {"name": raw[section]}
    optimizer = raw.get("optimizer")
    if isinstance(optimizer, dict) and isinstance(optimizer.get("scheduler"), str):
        optimizer["scheduler"] = {"name": optimizer["scheduler"]}
    return raw


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], spec_path: str) -> dict[Location, str]:
    """Apply each `PATH=VALUE` in place; return the field path of each (for error messages)."""
    applied: dict[Location, str] = {}
    errors: list[str] = []
    for item in overrides:
        path_text, sep, value_text = item.partition("=")
        segments = [s.strip() for s in path_text.split(".")]
        if not sep or not all(segments):
            errors.append(f"--set {item}: expected PATH=VALUE, for example optimizer.lr=0.01")
            continue
        value = parse_yaml_value(value_text, f"--set {item}")
        container: Any = normalise(raw)
        loc: list[str | int] = []
        for depth, segment in enumerate(segments):
            last = depth == len(segments) - 1
            if isinstance(container, list):
                if not (segment.isdigit() and int(segment) < len(container)):
                    errors.append(
                        f"--set {item}: {dotted(tuple(loc))} has {len(container)} items; {segment!r} is not an index "
                        f"0..{len(container) - 1}"
                    )
                    break
                key: str | int = int(segment)
            elif isinstance(container, dict):
                key = segment
                if not last and not isinstance(container.get(key), (dict, list)):
                    if key in container:
                        errors.append(f"--set {item}: {dotted((*loc, key))} is a value, not a section")
                        break
                    container[key] = {}
            else:
                errors.append(f"--set {item}: {dotted(tuple(loc))} is a value, not a section")
                break
            loc.append(key)
            if last:
                container[key] = value
                applied[tuple(loc)] = item
            else:
                container = container[key]
    if errors:
        raise SpecError(spec_path, errors)
    return applied


def overrides_label(overrides: Sequence[str]) -> str:
    """`lr=0.01 batch_size=32`: each override's last path part and its value, for run names and tables."""
    pairs = (item.split("=", 1) for item in overrides if "=" in item)
    return " ".join(f"{path.strip().rsplit('.', 1)[-1]}={value.strip()}" for path, value in pairs)
