"""Spec loading: `knightctl.spec.load_spec` and the problems it reports (FAULTS rows 1-7 and 10).

Every test writes a small spec into `tmp_path` and loads it with the real plugins; nothing is
mocked. A problem is a string `origin:LINE:COL: field.path: message` (or, for an override,
`--set PATH=VALUE: field.path: message`), so the tests parse it and check each part.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from knightctl.errors import SpecError
from knightctl.plugins.loader import load as load_plugins
from knightctl.spec.file import read_spec_file
from knightctl.spec.model import ExperimentSpec, load_spec

# Line numbers below refer to this text; `edit()` refuses to touch anything it does not find once.
VALID = """\
name: knights
description: test spec
data:
  name: battles
  n_samples: 64
model:
  - type: linear
    in_features: 2
    out_features: 5
  - relu
  - type: linear
    in_features: 5
    out_features: 1
loss: bce_with_logits
optimizer:
  name: adam
  lr: 0.1
train:
  epochs: 3
  batch_size: 16
"""

BUILTIN_PLUGINS = ("builtin.layers", "builtin.losses", "builtin.optimizers", "builtin.datasets", "builtin.metrics")

_LOCATED = re.compile(r"^(?P<origin>.+?):(?P<line>\d+):(?P<col>\d+): (?P<rest>.*)$", re.DOTALL)


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} must occur exactly once in the base spec"
    return text.replace(old, new)


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path, overrides)
    assert caught.value.exit_code == 2
    assert caught.value.problems, "a SpecError must list at least one problem"
    return caught.value.problems


def located(problem: str) -> tuple[str, int, int, str]:
    """`origin:LINE:COL: rest` -> (origin, line, col, rest)."""
    match = _LOCATED.match(problem)
    assert match, f"problem has no file:line:col prefix: {problem!r}"
    return match["origin"], int(match["line"]), int(match["col"]), match["rest"]


def field_problem(problems: list[str], field: str) -> tuple[str, int, int, str]:
    """The one problem about `field`: (origin, line, col, message)."""
    found = []
    for problem in problems:
        if problem.startswith("--set "):
            origin, _, rest = problem.partition(": ")
            line = col = 0
        else:
            origin, line, col, rest = located(problem)
        path, _, message = rest.partition(": ")
        if path == field:
            found.append((origin, line, col, message))
    assert len(found) == 1, f"expected one problem about {field!r}, got {problems!r}"
    return found[0]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    return write(tmp_path, VALID)


# --------------------------------------------------------------------------------------------
# the base spec is valid (otherwise every "exactly these problems" test below would be moot)


def test_base_spec_is_valid(spec_path: Path) -> None:
    spec = load_spec(spec_path)
    assert isinstance(spec, ExperimentSpec)
    assert spec.name == "knights"
    assert [layer.type for layer in spec.model] == ["linear", "relu", "linear"]
    assert spec.loss.name == "bce_with_logits"
    assert spec.source is not None and spec.source.path == str(spec_path)


# --------------------------------------------------------------------------------------------
# FAULTS 1: malformed YAML -> file:LINE:COL, nothing written


@pytest.mark.parametrize(
    ("old", "new", "line", "col", "words"),
    [
        ("  epochs: 3\n", "  epochs: 3\n    extra: 1\n", 20, 10, "mapping values are not allowed"),
        ("  n_samples: 64", "  n_samples: [64", 6, 6, "flow sequence"),
        ("  lr: 0.1", "\tlr: 0.1", 17, 1, "'\\t'"),
    ],
    ids=["bad-indent", "unclosed-bracket", "tab"],
)
def test_malformed_yaml_names_file_line_and_column(
    tmp_path: Path, old: str, new: str, line: int, col: int, words: str
) -> None:
    path = write(tmp_path, edit(VALID, old, new))
    before = listing(tmp_path)
    problems = problems_of(path)
    assert len(problems) == 1
    origin, got_line, got_col, message = located(problems[0])
    assert origin == str(path)
    assert (got_line, got_col) == (line, col)
    assert words in message
    assert listing(tmp_path) == before, "a failed load must not write files"


def test_malformed_yaml_error_is_a_spec_error_with_the_source(tmp_path: Path) -> None:
    path = write(tmp_path, "name: knights\ndata: [1, 2\nmodel: x\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.source == str(path)
    assert str(path) in str(caught.value)
    assert located(caught.value.problems[0])[1:3] == (3, 6)


# --------------------------------------------------------------------------------------------
# FAULTS 2: Python tags are refused and never run


def _payload(target: Path) -> str:
    return f'!!python/object/apply:os.system ["touch {shlex.quote(str(target))}"]'


@pytest.mark.parametrize("where", ["document", "value"])
def test_python_tag_is_rejected_and_runs_nothing(tmp_path: Path, where: str) -> None:
    target = tmp_path / "pwned"
    payload = _payload(target)
    text = payload + "\n" if where == "document" else edit(VALID, "name: knights", f"name: {payload}")
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 1
    origin, line, _, message = located(problems[0])
    assert origin == str(path) and line == 1
    assert "python/object/apply:os.system" in message and "not allowed" in message
    assert not target.exists(), "the spec loader ran code from a YAML tag"


def test_python_tag_payload_is_live_under_an_unsafe_loader(tmp_path: Path) -> None:
    """Control for the test above: the same payload does run under PyYAML's unsafe loader."""
    target = tmp_path / "control"
    yaml.unsafe_load(_payload(target))
    assert target.exists()


# --------------------------------------------------------------------------------------------
# FAULTS 3: duplicate keys


def test_duplicate_top_level_key_names_key_and_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "train: {epochs: 4}\n")
    problems = problems_of(path)
    assert len(problems) == 1
    origin, line, col, message = located(problems[0])
    assert (origin, line, col) == (str(path), 21, 1)
    assert "duplicate key 'train'" in message
    assert "line 18" in message and "line 21" in message


def test_duplicate_nested_key_names_key_and_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "  epochs: 5\n")
    problems = problems_of(path)
    assert len(problems) == 1
    _, line, col, message = located(problems[0])
    assert (line, col) == (21, 3)
    assert "duplicate key 'epochs'" in message
    assert "line 19" in message and "line 21" in message


def test_duplicate_key_in_a_flow_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, edit(VALID, "loss: bce_with_logits", "loss: {name: mse, name: l1}"))
    (problem,) = problems_of(path)
    _, line, _, message = located(problem)
    assert line == 14 and "duplicate key 'name'" in message


# --------------------------------------------------------------------------------------------
# FAULTS 4: unknown or misspelled fields


@pytest.mark.parametrize(
    ("old", "new", "field", "suggestion", "line"),
    [
        ("  batch_size: 16\n", "  batch_size: 16\nseeds: 3\n", "seeds", "seed", 21),
        ("  batch_size: 16\n", "  batch_size: 16\n  epoch: 4\n", "train.epoch", "epochs", 21),
        ("    in_features: 2", "    in_feature: 2", "model.0.in_feature", "in_features", 8),
        ("  n_samples: 64", "  n_sample: 64", "data.n_sample", "n_samples", 5),
        ("  lr: 0.1\n", "  lr: 0.1\n  weight_decai: 0.1\n", "optimizer.weight_decai", "weight_decay", 18),
    ],
    ids=["top-level", "train", "layer-param", "dataset-param", "optimizer-param"],
)
def test_unknown_field_gives_path_line_and_did_you_mean(
    tmp_path: Path, old: str, new: str, field: str, suggestion: str, line: int
) -> None:
    path = write(tmp_path, edit(VALID, old, new))
    origin, got_line, _, message = field_problem(problems_of(path), field)
    assert origin == str(path)
    assert got_line == line
    assert f"unknown field {field.rsplit('.', 1)[-1]!r}" in message
    assert f"did you mean {suggestion!r}?" in message
    allowed = message.split("allowed: ", 1)[1]
    assert suggestion in allowed


def test_unknown_field_without_a_close_match_lists_allowed_fields(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "zzz: 1\n")
    _, _, _, message = field_problem(problems_of(path), "zzz")
    assert "did you mean" not in message
    assert (
        "allowed: checkpoint, data, description, loss, metrics, model, name, optimizer, plugins, seed, tracking, train"
        in message
    )


# --------------------------------------------------------------------------------------------
# FAULTS 5: wrong types and out-of-range values, all at once


def test_wrong_types_and_ranges_are_all_reported_at_once(tmp_path: Path) -> None:
    text = edit(VALID, "  epochs: 3", '  epochs: "ten"')
    text = edit(text, "  lr: 0.1", "  lr: -0.1")
    text = edit(text, "  batch_size: 16", "  batch_size: 0")
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 3, problems
    assert field_problem(problems, "optimizer.lr")[1:3] == (17, 7)
    assert "(got -0.1)" in field_problem(problems, "optimizer.lr")[3]
    assert field_problem(problems, "train.epochs")[1:3] == (19, 11)
    assert "(got 'ten')" in field_problem(problems, "train.epochs")[3]
    assert field_problem(problems, "train.batch_size")[1:3] == (20, 15)
    assert "(got 0)" in field_problem(problems, "train.batch_size")[3]
    # in file order
    assert [located(p)[1] for p in problems] == [17, 19, 20]


@pytest.mark.parametrize(
    ("old", "new", "field", "shown"),
    [
        ("  epochs: 3", "  epochs: 0", "train.epochs", "(got 0)"),
        ("  epochs: 3", "  epochs: 2.5", "train.epochs", "(got 2.5)"),
        ("  epochs: 3", "  epochs: true", "train.epochs", "(got True)"),
        ("  epochs: 3", '  epochs: "3"', "train.epochs", "(got '3')"),
        ("  lr: 0.1", "  lr: 0", "optimizer.lr", "(got 0)"),
        ("  lr: 0.1", '  lr: "0.1"', "optimizer.lr", "(got '0.1')"),
        ("  batch_size: 16", "  batch_size: -3", "train.batch_size", "(got -3)"),
        ("  batch_size: 16", "  batch_size: true", "train.batch_size", "(got True)"),
        ("  batch_size: 16", "  batch_size: half", "train.batch_size", "(got 'half')"),
        ("  batch_size: 16", "  batch_size: 16\n  device: gpu", "train.device", "(got 'gpu')"),
        ("  n_samples: 64", "  n_samples: 64\n  val_fraction: 1.0", "data.val_fraction", "(got 1.0)"),
        ("  n_samples: 64", "  n_samples: 1", "data.n_samples", "(got 1)"),
        ("name: knights", "name: knights\nseed: -1", "seed", "(got -1)"),
        ("    out_features: 5", "    out_features: 0", "model.0.out_features", "(got 0)"),
    ],
)
def test_each_bad_value_is_reported_with_path_and_value(
    tmp_path: Path, old: str, new: str, field: str, shown: str
) -> None:
    path = write(tmp_path, edit(VALID, old, new))
    origin, line, _, message = field_problem(problems_of(path), field)
    assert origin == str(path) and line > 0
    assert shown in message


# --------------------------------------------------------------------------------------------
# FAULTS 6: non-finite numbers


@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", "+.inf"])
def test_non_finite_learning_rate_is_rejected(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, edit(VALID, "  lr: 0.1", f"  lr: {value}"))
    problems = problems_of(path)
    _, line, _, message = field_problem(problems, "optimizer.lr")
    assert line == 17
    assert "finite" in message or "greater than 0" in message


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("  n_samples: 64", "  n_samples: 64\n  noise: .nan", "data.noise"),
        ("  batch_size: 16", "  batch_size: 16\n  grad_clip: .inf", "train.grad_clip"),
        ("  lr: 0.1", "  lr: 0.1\n  eps: .nan", "optimizer.eps"),
    ],
)
def test_non_finite_numbers_are_rejected_everywhere(tmp_path: Path, old: str, new: str, field: str) -> None:
    path = write(tmp_path, edit(VALID, old, new))
    assert "finite" in field_problem(problems_of(path), field)[3]


# --------------------------------------------------------------------------------------------
# FAULTS 7: unknown component names


@pytest.mark.parametrize(
    ("kind", "old", "new", "field", "line", "suggestion"),
    [
        ("dataset", "  name: battles", "  name: battle", "data.name", 4, "battles"),
        ("layer", "  - relu", "  - rleu", "model.1.type", 10, "relu"),
        ("loss", "loss: bce_with_logits", "loss: bce_with_logit", "loss.name", 14, "bce_with_logits"),
        ("optimizer", "  name: adam", "  name: adma", "optimizer.name", 16, "adam"),
        ("scheduler", "  lr: 0.1", "  lr: 0.1\n  scheduler: cosin", "optimizer.scheduler.name", 18, "cosine"),
    ],
)
def test_unknown_component_name_lists_names_suggestion_and_plugins(
    tmp_path: Path, kind: str, old: str, new: str, field: str, line: int, suggestion: str
) -> None:
    path = write(tmp_path, edit(VALID, old, new))
    problems = problems_of(path)
    assert len(problems) == 1, problems
    origin, got_line, _, message = field_problem(problems, field)
    assert (origin, got_line) == (str(path), line)
    assert message.startswith(f"unknown {kind} ")
    assert f"did you mean {suggestion!r}?" in message
    available = message.split("available: ", 1)[1].split(" (plugins loaded", 1)[0]
    assert available.split(", ") == load_plugins().registry.names(kind)
    assert suggestion in available.split(", ")
    plugins = message.split("(plugins loaded: ", 1)[1]
    for plugin in BUILTIN_PLUGINS:
        assert plugin in plugins


def test_unknown_names_are_all_reported_at_once(tmp_path: Path) -> None:
    text = edit(VALID, "  name: battles", "  name: battle")
    text = edit(text, "  - relu", "  - rleu")
    text = edit(text, "loss: bce_with_logits", "loss: bce_with_logit")
    text = edit(text, "  name: adam", "  name: adma")
    problems = problems_of(write(tmp_path, text))
    assert [located(p)[3].split(":", 1)[0] for p in problems] == [
        "data.name",
        "model.1.type",
        "loss.name",
        "optimizer.name",
    ]


def test_unknown_layer_without_close_match_still_lists_available_names(tmp_path: Path) -> None:
    path = write(tmp_path, edit(VALID, "  - relu", "  - frobnicate"))
    _, _, _, message = field_problem(problems_of(path), "model.1.type")
    assert "did you mean" not in message
    assert "available: " in message and "relu" in message and "linear" in message
    assert "plugins loaded: builtin.layers" in message


# --------------------------------------------------------------------------------------------
# FAULTS 10: empty layer list, empty file, data files


def test_empty_layer_list_is_rejected(tmp_path: Path) -> None:
    text = VALID.split("model:")[0] + "model: []\n" + VALID.split("    out_features: 1\n")[1]
    path = write(tmp_path, text)
    origin, line, _, message = field_problem(problems_of(path), "model")
    assert (origin, line) == (str(path), 6)
    assert "at least 1 item" in message


def test_missing_layer_list_is_rejected(tmp_path: Path) -> None:
    text = VALID.split("model:")[0] + VALID.split("    out_features: 1\n")[1]
    _, _, _, message = field_problem(problems_of(write(tmp_path, text)), "model")
    assert "required field is missing" in message


@pytest.mark.parametrize(
    "text", ["", "\n\n", "# only a comment\n", "---\n"], ids=["empty", "blank", "comment", "bare-document"]
)
def test_empty_file_is_rejected(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.source == str(path)
    assert len(caught.value.problems) == 1
    assert "empty" in caught.value.problems[0]


def test_missing_spec_file_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.source == str(path)
    assert caught.value.problems == ["file not found"]


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, "- name: knights\n"))
    assert "mapping" in caught.value.problems[0]


def _csv_spec(path: str, features: str = "[east, north]", target: str = "won") -> str:
    return edit(
        VALID,
        "  name: battles\n  n_samples: 64\n",
        f"  name: csv\n  path: {path}\n  features: {features}\n  target: {target}\n",
    )


def test_csv_dataset_with_missing_file_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, _csv_spec("missing.csv"))
    problems = problems_of(path)
    assert len(problems) == 1
    origin, line, _, message = field_problem(problems, "data")
    assert (origin, line) == (str(path), 4)
    assert "data file not found" in message
    assert "missing.csv" in message and str(tmp_path.resolve()) in message  # resolved from the spec's folder


def test_csv_dataset_without_the_named_column_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "battles.csv").write_text("east,north,won\n0.1,0.2,1\n", encoding="utf-8")
    path = write(tmp_path, _csv_spec("battles.csv", features="[east, west]"))
    _, _, _, message = field_problem(problems_of(path), "data")
    assert "no column 'west'" in message
    assert "east, north, won" in message


def test_csv_dataset_without_the_target_column_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "battles.csv").write_text("east,north,won\n0.1,0.2,1\n", encoding="utf-8")
    path = write(tmp_path, _csv_spec("battles.csv", target="outcome"))
    assert "no column 'outcome'" in field_problem(problems_of(path), "data")[3]


def test_csv_path_is_resolved_from_the_spec_folder_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "battles.csv").write_text("east,north,won\n0.1,0.2,1\n", encoding="utf-8")
    path = write(folder, _csv_spec("battles.csv"))
    monkeypatch.chdir(tmp_path)
    spec = load_spec(path)
    assert spec.data.name == "csv"
    assert spec.data.params["path"] == "battles.csv"
    assert spec.data.options()["features"] == ["east", "north"]


def test_csv_path_that_is_a_folder_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "folder.csv").mkdir()
    path = write(tmp_path, _csv_spec("folder.csv"))
    assert "cannot read data file" in field_problem(problems_of(path), "data")[3]


# --------------------------------------------------------------------------------------------
# YAML 1.2 floats: 1e-3 is a number


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-3", 1e-3), ("1E-3", 1e-3), ("5e-2", 0.05), ("2.5e-4", 2.5e-4), ("1.0e-1", 0.1), ("3e+0", 3.0)],
)
def test_exponent_without_dot_is_read_as_a_float(tmp_path: Path, text: str, value: float) -> None:
    path = write(tmp_path, edit(VALID, "  lr: 0.1", f"  lr: {text}"))
    raw = read_spec_file(path).data["optimizer"]["lr"]
    assert type(raw) is float and raw == value
    spec = load_spec(path)
    assert type(spec.optimizer.lr) is float and spec.optimizer.lr == value


def test_exponent_floats_in_component_params(tmp_path: Path) -> None:
    path = write(tmp_path, edit(VALID, "  lr: 0.1", "  lr: 0.1\n  eps: 1e-7\n  weight_decay: 1e-4"))
    spec = load_spec(path)
    assert spec.optimizer.params["eps"] == 1e-7
    assert spec.optimizer.params["weight_decay"] == 1e-4


def test_quoted_exponent_stays_a_string_and_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, edit(VALID, "  lr: 0.1", '  lr: "1e-3"'))
    assert read_spec_file(path).data["optimizer"]["lr"] == "1e-3"
    assert "(got '1e-3')" in field_problem(problems_of(path), "optimizer.lr")[3]


# --------------------------------------------------------------------------------------------
# --set overrides


def test_overrides_keep_their_types(spec_path: Path) -> None:
    spec = load_spec(
        spec_path,
        ["train.epochs=7", "optimizer.lr=1e-2", "train.batch_size=full", "optimizer.betas=[0.5, 0.6]", "seed=3"],
    )
    assert type(spec.train.epochs) is int and spec.train.epochs == 7
    assert type(spec.optimizer.lr) is float and spec.optimizer.lr == 0.01
    assert spec.train.batch_size == "full"
    assert spec.to_data()["optimizer"]["betas"] == [0.5, 0.6]
    assert spec.seed == 3
    assert spec.source is not None and "optimizer.lr=1e-2" in spec.source.overrides


def test_override_int_for_a_float_field_becomes_a_float(spec_path: Path) -> None:
    spec = load_spec(spec_path, ["optimizer.lr=1"])
    assert type(spec.optimizer.lr) is float and spec.optimizer.lr == 1.0


def test_override_float_for_an_int_field_is_rejected(spec_path: Path) -> None:
    origin, _, _, message = field_problem(problems_of(spec_path, ("train.epochs=3.0",)), "train.epochs")
    assert origin == "--set train.epochs=3.0"
    assert "(got 3.0)" in message


def test_overrides_into_the_layer_list(spec_path: Path) -> None:
    spec = load_spec(spec_path, ["model.0.out_features=8", "model.2.in_features=8"])
    assert spec.model[0].params["out_features"] == 8
    assert spec.model[2].params["in_features"] == 8
    assert spec.model[0].params["in_features"] == 2  # untouched siblings survive


def test_override_of_a_string_shorthand_layer(spec_path: Path) -> None:
    assert "  - relu\n" in VALID
    spec = load_spec(spec_path, ["model.1.type=tanh"])
    assert spec.model[1].type == "tanh"
    assert spec.to_data()["model"][1] == {"type": "tanh"}


def test_override_of_a_string_shorthand_section(spec_path: Path) -> None:
    assert "loss: bce_with_logits\n" in VALID
    spec = load_spec(spec_path, ["loss.pos_weight=2"])
    assert spec.loss.name == "bce_with_logits"
    assert spec.loss.params["pos_weight"] == 2.0


def test_later_override_descends_into_a_shorthand_set_by_an_earlier_one(spec_path: Path) -> None:
    spec = load_spec(
        spec_path, ["loss=huber", "loss.delta=2.0", "model.1=tanh", "model.1.type=gelu", "model.1.approximate=tanh"]
    )
    assert spec.to_data()["loss"] == {"name": "huber", "delta": 2.0}
    assert spec.to_data()["model"][1] == {"type": "gelu", "approximate": "tanh"}


def test_override_adds_a_missing_section(spec_path: Path) -> None:
    spec = load_spec(spec_path, ["optimizer.scheduler.name=cosine", "tracking.run_name=first"])
    assert spec.optimizer.scheduler is not None and spec.optimizer.scheduler.name == "cosine"
    assert spec.tracking.run_name == "first"


@pytest.mark.parametrize(
    ("override", "field", "suggestion"),
    [
        ("optimizer.lrr=0.01", "optimizer.lrr", "lr"),
        ("trian.epochs=5", "trian", "train"),
        ("train.epoch=5", "train.epoch", "epochs"),
        ("model.0.out_feature=8", "model.0.out_feature", "out_features"),
    ],
)
def test_unknown_override_path_names_the_override_and_did_you_mean(
    spec_path: Path, override: str, field: str, suggestion: str
) -> None:
    problems = problems_of(spec_path, (override,))
    assert len(problems) == 1, problems
    origin, _, _, message = field_problem(problems, field)
    assert origin == f"--set {override}"
    assert f"did you mean {suggestion!r}?" in message


def test_override_bad_values_are_reported_with_their_origin(spec_path: Path) -> None:
    problems = problems_of(spec_path, ("train.epochs=ten", "optimizer.lr=-1"))
    assert len(problems) == 2
    assert field_problem(problems, "train.epochs")[0] == "--set train.epochs=ten"
    assert field_problem(problems, "optimizer.lr")[0] == "--set optimizer.lr=-1"
    assert "(got -1)" in field_problem(problems, "optimizer.lr")[3]


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("name.x=1", "name is a value, not a section"),
        ("train.epochs.max=1", "train.epochs is a value, not a section"),
        ("model.3.type=relu", "model has 3 items"),
        ("model.x.type=relu", "not an index 0..2"),
        ("model.-1.type=relu", "not an index 0..2"),
        ("optimizer.lr", "expected PATH=VALUE"),
        ("=3", "expected PATH=VALUE"),
        ("train..epochs=3", "expected PATH=VALUE"),
    ],
    ids=[
        "through-scalar",
        "through-nested-scalar",
        "index-too-big",
        "index-not-a-number",
        "negative-index",
        "no-equals",
        "no-path",
        "empty-segment",
    ],
)
def test_bad_override_paths_are_rejected(spec_path: Path, override: str, words: str) -> None:
    problems = problems_of(spec_path, (override,))
    assert len(problems) == 1
    assert problems[0].startswith(f"--set {override}: ")
    assert words in problems[0]


def test_override_with_malformed_yaml_value_is_rejected(spec_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(spec_path, ["optimizer.lr=[1,"])
    assert caught.value.source == "--set optimizer.lr=[1,"
    assert len(caught.value.problems) == 1


def test_override_errors_are_all_reported_at_once(spec_path: Path) -> None:
    problems = problems_of(spec_path, ("name.x=1", "model.9.type=relu", "nothing"))
    assert len(problems) == 3


def test_overrides_do_not_change_the_file(spec_path: Path) -> None:
    load_spec(spec_path, ["optimizer.lr=0.5"])
    assert spec_path.read_text(encoding="utf-8") == VALID
    assert load_spec(spec_path).optimizer.lr == 0.1


# --------------------------------------------------------------------------------------------
# static width check (shapes.py)


def test_width_mismatch_between_linear_layers_names_the_layer(tmp_path: Path) -> None:
    path = write(tmp_path, edit(VALID, "    in_features: 5", "    in_features: 4"))
    problems = problems_of(path)
    assert len(problems) == 1
    origin, line, _, message = field_problem(problems, "model.2")
    assert (origin, line) == (str(path), 11)
    assert "layer 2 (linear)" in message
    assert "4" in message and "5" in message


def test_width_mismatch_with_the_dataset_names_layer_zero(tmp_path: Path) -> None:
    path = write(tmp_path, edit(VALID, "    in_features: 2", "    in_features: 3"))
    _, line, _, message = field_problem(problems_of(path), "model.0")
    assert line == 7
    assert "layer 0 (linear)" in message and "width 2" in message


def test_width_mismatch_after_an_override_names_the_layer(spec_path: Path) -> None:
    problems = problems_of(spec_path, ("model.0.out_features=8",))
    _, _, _, message = field_problem(problems, "model.2")
    assert "layer 2 (linear)" in message and "width 8" in message


def test_width_is_carried_through_elementwise_layers(tmp_path: Path) -> None:
    text = edit(
        VALID,
        "  - relu\n",
        "  - relu\n  - type: dropout\n    p: 0.1\n  - type: linear\n    in_features: 5\n    out_features: 6\n",
    )
    path = write(tmp_path, text)
    _, _, _, message = field_problem(problems_of(path), "model.4")
    assert "layer 4 (linear)" in message and "width 6" in message


def test_norm_layer_width_mismatch_names_the_layer(tmp_path: Path) -> None:
    path = write(tmp_path, edit(VALID, "  - relu\n", "  - type: layer_norm\n    features: 4\n"))
    _, line, _, message = field_problem(problems_of(path), "model.1")
    assert line == 10 and "layer 1 (layer_norm)" in message


def test_binary_loss_after_several_outputs_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, edit(VALID, "    out_features: 1", "    out_features: 3"))
    problems = problems_of(path)
    assert len(problems) == 1
    _, line, _, message = field_problem(problems, "model.2")
    assert line == 11
    assert "width 3" in message and "bce_with_logits" in message


def test_multi_output_is_fine_for_a_class_loss(tmp_path: Path) -> None:
    text = edit(VALID, "    out_features: 1", "    out_features: 3")
    text = edit(text, "loss: bce_with_logits", "loss: cross_entropy")
    spec = load_spec(write(tmp_path, text))
    assert spec.model[-1].params["out_features"] == 3


# --------------------------------------------------------------------------------------------
# the resolved spec


def test_to_data_fills_in_every_default(spec_path: Path) -> None:
    data = load_spec(spec_path).to_data()
    assert data["seed"] is None
    assert data["data"] == {
        "name": "battles",
        "val_fraction": 0.2,
        "standardize": False,
        "split": {"shuffle": True, "stratify": False},
        "n_samples": 64,
        "noise": 0.1,
        "seed": None,
    }
    assert data["model"] == [
        {"type": "linear", "in_features": 2, "out_features": 5, "bias": True},
        {"type": "relu"},
        {"type": "linear", "in_features": 5, "out_features": 1, "bias": True},
    ]
    assert data["loss"] == {"name": "bce_with_logits", "pos_weight": None}
    assert data["optimizer"] == {
        "name": "adam",
        "lr": 0.1,
        "scheduler": None,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
    }
    assert data["train"] == {
        "epochs": 3,
        "batch_size": 16,
        "device": "auto",
        "log_every_n_steps": 10,
        "eval_every_n_epochs": "auto",
        "grad_clip": None,
        "deterministic": False,
        "monitor": "auto",
        "monitor_mode": "auto",
        "early_stopping": None,
        "threads": "auto",
    }
    assert data["tracking"] == {
        "experiment": None,
        "uri": None,
        "run_name": None,
        "log_model": True,
        "register_model": None,
    }


def test_to_data_is_plain_yaml_data_that_loads_back_to_the_same_spec(spec_path: Path, tmp_path: Path) -> None:
    spec = load_spec(spec_path)
    again = load_spec(write(tmp_path, yaml.safe_dump(spec.to_data(), sort_keys=False), "resolved.yaml"))
    assert again.to_data() == spec.to_data()
    assert again.digest() == spec.digest()


def test_spec_is_frozen(spec_path: Path) -> None:
    spec = load_spec(spec_path)
    with pytest.raises(ValidationError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        spec.optimizer.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        spec.train.epochs = 99  # type: ignore[misc]
    with pytest.raises(ValidationError):
        spec.model[0].type = "relu"  # type: ignore[misc]
    assert spec.name == "knights" and spec.optimizer.lr == 0.1 and spec.train.epochs == 3


def test_spec_cannot_be_mutated_in_place(spec_path: Path) -> None:
    spec = load_spec(spec_path)
    digest = spec.digest()
    with pytest.raises((TypeError, ValidationError, AttributeError)):
        spec.model[0].params["out_features"] = 99
    with pytest.raises((TypeError, ValidationError, AttributeError)):
        spec.model.append(spec.model[1])
    assert spec.digest() == digest


def test_digest_is_stable_for_equal_specs(spec_path: Path, tmp_path: Path) -> None:
    first = load_spec(spec_path)
    assert first.digest() == load_spec(spec_path).digest()
    assert re.fullmatch(r"[0-9a-f]{64}", first.digest())
    # the same experiment spelled differently: flow style, expanded shorthands, explicit
    # defaults, keys in another order, 1e-1 for 0.1
    other = """\
train: {batch_size: 16, epochs: 3, device: auto}
optimizer: {lr: 1e-1, name: adam, betas: [0.9, 0.999]}
loss: {name: bce_with_logits}
model:
  - {type: linear, in_features: 2, out_features: 5, bias: true}
  - {type: relu}
  - {type: linear, in_features: 5, out_features: 1}
data: {name: battles, n_samples: 64, noise: 0.1, val_fraction: 0.2}
description: test spec
name: knights
"""
    assert load_spec(write(tmp_path, other, "other.yaml")).digest() == first.digest()


@pytest.mark.parametrize(
    "override",
    [
        "optimizer.lr=0.2",
        "train.epochs=4",
        "seed=1",
        "model.0.bias=false",
        "data.noise=0.2",
        "description=changed",
        "model.1.type=tanh",
    ],
)
def test_digest_changes_when_a_value_changes(spec_path: Path, override: str) -> None:
    assert load_spec(spec_path, [override]).digest() != load_spec(spec_path).digest()


def test_with_seed_changes_only_the_seed(spec_path: Path) -> None:
    spec = load_spec(spec_path)
    seeded = spec.with_seed(7)
    assert seeded.seed == 7 and spec.seed is None
    assert seeded.digest() != spec.digest()
    assert {k: v for k, v in seeded.to_data().items() if k != "seed"} == {
        k: v for k, v in spec.to_data().items() if k != "seed"
    }
    assert seeded.source == spec.source


# --------------------------------------------------------------------------------------------
# regressions: bugs found while writing these tests, fixed since


def test_yaml_merge_keys_are_accepted(tmp_path: Path) -> None:
    text = edit(VALID, "  - type: linear\n    in_features: 2\n", "  - &linear\n    type: linear\n    in_features: 2\n")
    text = edit(text, "  - type: linear\n    in_features: 5\n", "  - <<: *linear\n    in_features: 5\n")
    path = write(tmp_path, text)
    assert yaml.safe_load(text)["model"][2] == {"type": "linear", "in_features": 5, "out_features": 1}
    spec = load_spec(path)
    assert spec.to_data()["model"][2] == {"type": "linear", "in_features": 5, "out_features": 1, "bias": True}


@pytest.mark.parametrize("key", ["[a, b]: 1\n", "? {a: 1}\n: 2\n"], ids=["list-key", "mapping-key"])
def test_unhashable_key_is_a_spec_error(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, VALID + key)
    problems = problems_of(path)
    assert located(problems[0])[1] == 21


def test_local_tag_is_reported_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, edit(VALID, "name: knights", "name: !foo knights"))
    (problem,) = problems_of(path)
    assert "!foo" in problem
    assert "!!!foo" not in problem
