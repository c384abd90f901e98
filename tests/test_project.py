"""The project's promises to a newcomer: the README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_gives_two_set_up_commands_one_training_one_testing() -> None:
    train, test = readme_commands()[:2]
    assert train.endswith("knightctl train experiments/round_table.yaml")
    assert "pytest" in test
    for command in (train, test):
        assert command.startswith("python3 -m venv .venv && ")
        assert "torch==2.13.0" in command  # the CPU build on disk here, never a multi-GB download


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = readme_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_pyproject_stays_right_for_cuda_and_mps_users() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_requirement = next(r for r in project["dependencies"] if r.startswith("torch"))
    # A floor only (the one the suite was run on): no pin, no local build tag such as +cpu, so pip
    # takes the CUDA, MPS or CPU build that fits the user's machine.
    assert re.fullmatch(r"torch>=2\.\d+", torch_requirement), torch_requirement
    assert project["scripts"]["knightctl"] == "knightctl.cli:main"
    assert "pytest" in " ".join(project["optional-dependencies"]["test"])


def test_every_experiment_starts_with_how_to_run_it() -> None:
    specs = sorted((ROOT / "experiments").glob("*.yaml"))
    assert specs
    for spec in specs:
        head = spec.read_text().split("\n\n")[0]
        assert head.startswith("#") and f"knightctl train experiments/{spec.name}" in head, spec.name


def test_every_hook_is_in_the_readme_hook_reference_with_its_arguments() -> None:
    import inspect

    from knightctl.plugins import hookspecs

    reference = (ROOT / "README.md").read_text().split("## Hook reference", 1)[1].split("\n## ", 1)[0]
    hooks = {name: f for name, f in vars(hookspecs).items() if hasattr(f, f"{hookspecs.PROJECT_NAME}_spec")}
    assert len(hooks) >= 10
    for name, function in hooks.items():
        assert f"`{name}({', '.join(inspect.signature(function).parameters)})`" in reference, name
