"""Read a YAML spec as plain data, with the line and column of every value.

PyYAML's safe loader already refuses Python tags; on top of it this loader refuses duplicate
keys (PyYAML silently keeps the last one) and reads `1e-3` as a float, as YAML 1.2 does (PyYAML
follows YAML 1.1, where a float needs a dot, so `lr: 1e-3` would arrive as a string).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from knightctl.errors import SpecError

Location = tuple[int | str, ...]

_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and accepts YAML 1.2 floats such as 1e-3."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges; keys written beside it may override the merged ones
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "keys must be plain names, not lists or mappings", key_node.start_mark
                )
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first_line[key]}, again on line {line})",
                    key_node.start_mark,
                )
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT, list("-+0123456789"))


@dataclass(frozen=True)
class SpecDocument:
    """A parsed spec file: its data and where each value stands in the text."""

    path: str
    text: str
    data: dict[str, Any]
    positions: dict[Location, tuple[int, int]] = field(default_factory=dict)

    def position_of(self, loc: Location) -> tuple[int, int] | None:
        """Line and column (1-based) of `loc`, or of its nearest ancestor that is in the file."""
        for end in range(len(loc), -1, -1):
            found = self.positions.get(tuple(loc[:end]))
            if found is not None:
                return found
        return None


def parse_yaml_value(text: str, what: str) -> Any:
    """Parse one YAML scalar or flow value (as given to `--set`) with the spec's rules."""
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - _SpecLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise SpecError(what, [_describe_yaml_error(exc)]) from None


def read_spec_file(path: str | Path, text: str | None = None) -> SpecDocument:
    """Load `path` (or `text`, said to come from `path`) into plain data; every YAML problem
    becomes a SpecError naming file:line:col."""
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8") if text is None else text
    except FileNotFoundError:
        raise SpecError(shown, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(shown, [f"cannot read the file: {exc}"]) from None
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise SpecError(shown, [_describe_yaml_error(exc, shown)]) from None
    finally:
        loader.dispose()
    if data is None:
        raise SpecError(shown, ["the file is empty; a spec needs at least name, data, model, loss, optimizer, train"])
    if not isinstance(data, dict):
        raise SpecError(shown, [f"the top level must be a mapping of sections, not a {type(data).__name__}"])
    positions: dict[Location, tuple[int, int]] = {}
    _record_positions(node, (), positions)
    return SpecDocument(path=shown, text=text, data=data, positions=positions)


def _record_positions(node: yaml.Node, loc: Location, out: dict[Location, tuple[int, int]]) -> None:
    out[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                _record_positions(value_node, (*loc, key_node.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_positions(item, (*loc, index), out)


def _describe_yaml_error(exc: yaml.YAMLError, path: str | None = None) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    tag = re.search(r"tag '([^']+)'", problem)
    if tag and "constructor" in problem:
        shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        problem = f"the tag {shown} is not allowed: specs are plain data and never run code"
    context = getattr(exc, "context", None)
    if context and "duplicate" not in problem and "tag" not in problem:
        problem = f"{problem} ({context})"
    where = f"{mark.line + 1}:{mark.column + 1}" if mark is not None else "?"
    return f"{path}:{where}: {problem}" if path else f"{where}: {problem}"
