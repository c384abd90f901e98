"""The package's shape, read from the source with `ast` (nothing is imported): imports point one
way, with no cycle anywhere, type-only and function-level imports counted too; and the library
below the command line never imports click or rich."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "knightctl"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def knightctl_imports(path: Path, modules: set[str]) -> set[str]:
    """Every knightctl module `path` imports, at any depth of its code (`from knightctl.x import y`
    names module x.y where that is a module, else x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                for alias in node.names
            ]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): knightctl_imports(path, modules) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                return path[path.index(imported) :] + [imported]
            if imported not in state:
                cycle = visit(imported)
                if cycle:
                    return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_no_module_imports_itself_through_others() -> None:
    graph = import_graph()
    assert len(graph) > 60  # the whole package was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_command_line_and_its_console_import_click_and_rich() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if name.startswith(("knightctl.cli", "knightctl.console")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imported = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("click", "rich") for n in imported), f"{name} imports {imported}"


def imported_roots(path: Path) -> set[str]:
    """The top-level packages `path` imports, at any depth of its code."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_mlflow_is_imported_only_by_the_tracking_package_and_gradchecks_logging() -> None:
    allowed = ("knightctl.tracking", "knightctl.gradcheck.tracking")
    importers = sorted(module_name(p) for p in PACKAGE.rglob("*.py") if "mlflow" in imported_roots(p))
    assert importers and all(name.startswith(allowed) for name in importers), importers


def test_every_error_knightctl_explains_is_defined_in_errors_py() -> None:
    elsewhere = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            # KnightctlError's subclasses, and any other exception named as one
            if isinstance(node, ast.ClassDef) and any(getattr(base, "id", "").endswith("Error") for base in node.bases):
                elsewhere.append(f"{module_name(path)}.{node.name}")
    assert elsewhere == []
