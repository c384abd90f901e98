"""`knightctl components` and the options `knightctl ops` shows, run in-process as the CLI runs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from click.testing import CliRunner
from pydantic import Field

from knightctl.cli.commands import main
from knightctl.errors import UsageError
from knightctl.plugins.catalog import KINDS, catalog, component_kind, options_of
from knightctl.plugins.registry import Params, Registry

ROOT = Path(__file__).resolve().parents[2]
COMPONENT_KEYS = {"kind", "name", "plugin", "description", "options", "details"}
OPTION_KEYS = {"name", "type", "required", "default", "constraints", "description"}


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(ROOT)  # ./plugins holds the example ops
    for name in ("KNIGHTCTL_PLUGINS_DIR", "KNIGHTCTL_DISABLE_PLUGINS", "KNIGHTCTL_NO_EXTERNAL_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def test_components_json_lists_every_kind_with_its_options_and_plugin(runner: CliRunner) -> None:
    result = runner.invoke(main, ["components", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert {entry["kind"] for entry in listed} == set(KINDS.values())
    assert all(set(entry) == COMPONENT_KEYS for entry in listed)
    assert all(set(option) == OPTION_KEYS for entry in listed for option in entry["options"])
    by_name = {(entry["kind"], entry["name"]): entry for entry in listed}
    blobs = by_name["dataset", "blobs"]
    assert blobs["plugin"] == "builtin.datasets"
    options = {option["name"]: option for option in blobs["options"]}
    assert options["n_features"] == {
        "name": "n_features",
        "type": "int",
        "required": False,
        "default": 784,
        "constraints": ">= 1",
        "description": "dimensions of each point (784: the size of a 28x28 image)",
    }
    assert options["seed"]["type"] == "int | None" and options["seed"]["default"] is None
    linear = {option["name"]: option for option in by_name["layer", "linear"]["options"]}
    assert linear["out_features"]["required"] is True and linear["bias"]["default"] is True
    assert by_name["optimizer", "adam"]["options"][0]["default"] == [0.9, 0.999]  # a tuple, as JSON writes it
    assert by_name["loss", "cross_entropy"]["details"] == {"target": "class"}
    assert by_name["metric", "recall"]["details"] == {
        "goal": "max",
        "targets": ["binary", "class"],
        "per_class": True,
        "default": True,
        "logged_as": "val/recall/<class>",
    }
    smooth = by_name["layer", "knight::smooth_relu"]  # an op from ./plugins, as a layer
    assert smooth["plugin"] == "smooth_relu" and [option["name"] for option in smooth["options"]] == ["beta"]


def test_components_of_one_kind_on_screen_and_an_unknown_kind(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--no-external-plugins", "components", "schedulers"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("3 schedulers\n  cosine  from builtin.optimizers\n")
    assert "      step_size: int (required) (> 0)  epochs between decays\n" in result.output
    assert "datasets" not in result.output
    assert runner.invoke(main, ["--no-external-plugins", "components", "dataset"]).output.startswith("3 datasets\n")
    wrong = runner.invoke(main, ["components", "optimisers"])
    assert wrong.exit_code == 2
    assert "unknown component kind 'optimisers'; the kinds are datasets, layers, losses, optimizers" in wrong.output


def test_ops_shows_each_ops_options_with_defaults(runner: CliRunner) -> None:
    listed = runner.invoke(main, ["ops", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {row["name"]: row for row in json.loads(listed.output)}
    (alpha,) = rows["knight::grad_reverse"]["options"]
    assert (alpha["name"], alpha["type"], alpha["default"], alpha["constraints"]) == ("alpha", "float", 1.0, ">= 0")
    assert rows["knight::swish"]["options"] == []
    screen = runner.invoke(main, ["ops"]).output
    assert "    options:\n      alpha: float = 1.0 (>= 0)  how strongly the gradient is reversed" in screen


class _Example(Params):
    size: int = Field(gt=0, le=8, description="how many")
    mode: Literal["fast", "exact"] = "fast"
    pair: tuple[float, float] = Field((0.5, 2.0), strict=False)
    names: list[str] = Field(default_factory=list, min_length=0)


def test_options_read_off_a_params_model_without_building_anything() -> None:
    size, mode, pair, names = options_of(_Example)
    assert (size.type, size.required, size.default, size.constraints) == ("int", True, None, "> 0, <= 8")
    assert (mode.type, mode.default, mode.description) == ("'fast' | 'exact'", "fast", "")
    assert (pair.type, pair.default) == ("tuple[float, float]", [0.5, 2.0])
    assert (names.type, names.default, names.constraints) == ("list[str]", [], "length >= 0")
    assert component_kind("Losses") == "loss" and component_kind("metric") == "metric"
    with pytest.raises(UsageError, match="unknown component kind 'ops'; the kinds are datasets, layers"):
        catalog(Registry(), ["ops"])
