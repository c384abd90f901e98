"""Turn validation failures into messages that name the file, line, field path and value."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from knightctl.spec.file import Location, SpecDocument


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, at a field path such as ("optimizer", "lr")."""

    loc: Location
    message: str


def dotted(loc: Location) -> str:
    """("model", 1, "type") -> "model.1.type", the same spelling `--set` uses."""
    return ".".join(str(part) for part in loc) or "(top level)"


def format_problem(problem: Problem, document: SpecDocument, overrides: dict[Location, str]) -> str:
    """`file:line:col: path: message`, or `--set PATH=VALUE: path: message` for an override."""
    origin = _override_origin(problem.loc, overrides)
    if origin is None:
        position = document.position_of(problem.loc)
        origin = f"{document.path}:{position[0]}:{position[1]}" if position else document.path
    return f"{origin}: {dotted(problem.loc)}: {problem.message}"


def _override_origin(loc: Location, overrides: dict[Location, str]) -> str | None:
    matches = [path for path in overrides if loc[: len(path)] == path or path[: len(loc)] == loc]
    return f"--set {overrides[max(matches, key=len)]}" if matches else None


def problems_from_validation(
    error: ValidationError, model: type[BaseModel], prefix: Location = (), also_allowed: Iterable[str] = ()
) -> list[Problem]:
    """One Problem per pydantic error, with "did you mean" for unknown fields."""
    found = []
    for detail in error.errors(include_url=False):
        inner = tuple(detail["loc"])
        loc = prefix + inner
        kind = detail["type"]
        if kind == "extra_forbidden":
            allowed = sorted(set(fields_at(model, inner[:-1])) | set(also_allowed))
            message = (
                f"unknown field {inner[-1]!r}{did_you_mean(str(inner[-1]), allowed)}; allowed: {', '.join(allowed)}"
            )
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "value_error" and isinstance(detail.get("input"), dict):
            message = detail["msg"].removeprefix("Value error, ")  # a section's own check: its line says where
        else:
            message = f"{detail['msg'].removeprefix('Value error, ')} (got {_short_repr(detail.get('input'))})"
        found.append(Problem(loc, message))
    return found


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def fields_at(model: type[BaseModel], loc: Location) -> list[str]:
    """Field names of the model found by following `loc` from `model` (list indices skipped)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        field = current.model_fields.get(str(part))
        current = _model_in(field.annotation) if field is not None else None
    return [name for name in (current.model_fields if current else {}) if name != "params"]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
