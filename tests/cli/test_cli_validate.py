"""`knightctl validate` and `--help` through a real subprocess: exit codes, output, no heavy imports.

Each test runs `python -m knightctl ...` with `cwd=tmp_path`, as a user would; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from processes import environment, run_knightctl

from knightctl.spec.model import load_spec

REPO = Path(__file__).resolve().parents[2]
ROUND_TABLE = REPO / "experiments" / "round_table.yaml"

VALID = """\
name: knights
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
"""

# Three problems on lines 16, 18 and 19 (lr, epochs, batch_size).
BAD = VALID.replace("  lr: 0.1", "  lr: -0.1").replace("  epochs: 3", '  epochs: "ten"\n  batch_size: 0')

# Runs the CLI in-process (as `python -m knightctl` does) and then reports which heavy modules
# were imported, on the last line of stderr.
_IMPORT_PROBE = """
import json, runpy, sys
sys.argv = ["knightctl", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("knightctl", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "mlflow"))
report = {"code": code, "heavy": heavy, "spec_loaded": "knightctl.spec" in sys.modules, \
"cli_loaded": "knightctl.cli" in sys.modules}
sys.stderr.write("\\nIMPORT-PROBE " + json.dumps(report) + "\\n")
"""


def _env(columns: int | None = 200) -> dict[str, str | None]:
    """The changes to this process's environment that every command here runs with (None: removed)."""
    return {
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "NO_COLOR": "1",
        "MLFLOW_TRACKING_URI": None,
        "KNIGHTCTL_PLUGINS_DIR": None,
        # Off a terminal rich wraps at COLUMNS (80 by default); a wide one keeps long lines intact
        # here. The default width is exercised on its own in test_printed_spec_survives_*.
        "COLUMNS": None if columns is None else str(columns),
    }


def knightctl(cwd: Path, *args: str, columns: int | None = 200) -> subprocess.CompletedProcess[str]:
    return run_knightctl(*args, cwd=cwd, env=_env(columns), timeout=60)


def probe_imports(cwd: Path, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, *args],
        cwd=cwd,
        env=environment(_env()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("IMPORT-PROBE ")]
    assert lines, f"the probe did not report:\n{done.stdout}\n{done.stderr}"
    report = json.loads(lines[-1].removeprefix("IMPORT-PROBE "))
    report["stdout"] = done.stdout
    report["stderr"] = done.stderr
    return report


def resolved_yaml(stdout: str) -> dict:
    """The spec `validate` printed: one `# ...: valid; ...` comment line, then YAML."""
    header, _, body = stdout.partition("\n")
    assert header.startswith("# ") and "valid" in header, stdout
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise AssertionError(f"validate printed invalid YAML ({exc}):\n{stdout}") from None
    assert isinstance(data, dict), stdout
    return data


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------------------------
# a valid spec


def test_validate_round_table_prints_the_resolved_spec(tmp_path: Path) -> None:
    done = knightctl(tmp_path, "validate", str(ROUND_TABLE))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert str(ROUND_TABLE) in done.stdout.splitlines()[0]
    printed = resolved_yaml(done.stdout)
    assert printed == load_spec(ROUND_TABLE).to_data()
    # defaults the file does not state are filled in
    assert printed["train"]["log_every_n_steps"] == 10
    assert printed["model"][1] == {"type": "relu"}
    assert printed["optimizer"]["betas"] == [0.9, 0.999]


def test_validate_applies_overrides(tmp_path: Path) -> None:
    done = knightctl(
        tmp_path,
        "validate",
        str(ROUND_TABLE),
        "--set",
        "optimizer.lr=1e-2",
        "--set",
        "train.epochs=5",
        "--set",
        "model.0.out_features=8",
        "--set",
        "model.2.in_features=8",
    )
    assert done.returncode == 0, done.stderr
    printed = resolved_yaml(done.stdout)
    assert printed["optimizer"]["lr"] == 0.01
    assert printed["train"]["epochs"] == 5
    assert printed["model"][0]["out_features"] == 8 and printed["model"][2]["in_features"] == 8


def test_validate_relative_spec_path_from_cwd(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(VALID, encoding="utf-8")
    done = knightctl(tmp_path, "validate", "spec.yaml")
    assert done.returncode == 0, done.stderr
    assert resolved_yaml(done.stdout)["name"] == "knights"


def test_validate_writes_no_files(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(VALID, encoding="utf-8")
    (tmp_path / "bad.yaml").write_text(BAD, encoding="utf-8")
    before = listing(tmp_path)
    assert knightctl(tmp_path, "validate", "good.yaml").returncode == 0
    assert knightctl(tmp_path, "validate", "bad.yaml").returncode == 2
    assert listing(tmp_path) == before  # no mlflow.db, no mlruns/, no checkpoints


# --------------------------------------------------------------------------------------------
# a bad spec: exit 2, every error, no traceback


def test_validate_bad_spec_reports_every_error_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD, encoding="utf-8")
    done = knightctl(tmp_path, "validate", "bad.yaml")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert done.stdout.strip() == "", "no resolved spec is printed for an invalid one"
    assert "3 problems" in done.stderr
    assert "bad.yaml:16:7: optimizer.lr:" in done.stderr and "(got -0.1)" in done.stderr
    assert "bad.yaml:18:11: train.epochs:" in done.stderr and "(got 'ten')" in done.stderr
    assert "bad.yaml:19:15: train.batch_size:" in done.stderr and "(got 0)" in done.stderr


def test_validate_unknown_names_list_the_plugins(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(VALID.replace("  - relu", "  - rleu"), encoding="utf-8")
    done = knightctl(tmp_path, "validate", "bad.yaml")
    assert done.returncode == 2
    assert "model.1.type: unknown layer 'rleu'; did you mean 'relu'?" in done.stderr
    assert "plugins loaded: builtin.layers" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_malformed_yaml_exits_2_with_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: knights\ndata: [1, 2\nmodel: x\n", encoding="utf-8")
    done = knightctl(tmp_path, "validate", "bad.yaml")
    assert done.returncode == 2
    assert "bad.yaml:3:6:" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_bad_override_exits_2_and_names_it(tmp_path: Path) -> None:
    done = knightctl(tmp_path, "validate", str(ROUND_TABLE), "--set", "optimizer.lrr=0.01")
    assert done.returncode == 2
    assert "--set optimizer.lrr=0.01: optimizer.lrr: unknown field 'lrr' (did you mean 'lr'?)" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_bad_override_path_exits_2(tmp_path: Path) -> None:
    done = knightctl(tmp_path, "validate", str(ROUND_TABLE), "--set", "model.7.type=relu", "--set", "name.x=1")
    assert done.returncode == 2
    assert "--set model.7.type=relu: model has 3 items" in done.stderr
    assert "--set name.x=1: name is a value, not a section" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_width_mismatch_exits_2_naming_the_layer(tmp_path: Path) -> None:
    done = knightctl(tmp_path, "validate", str(ROUND_TABLE), "--set", "model.0.out_features=8")
    assert done.returncode == 2
    assert "model.2: layer 2 (linear)" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_missing_file_exits_2(tmp_path: Path) -> None:
    done = knightctl(tmp_path, "validate", "nowhere.yaml")
    assert done.returncode == 2
    assert "nowhere.yaml" in done.stderr and "file not found" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_empty_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("", encoding="utf-8")
    done = knightctl(tmp_path, "validate", "empty.yaml")
    assert done.returncode == 2
    assert "empty" in done.stderr and "Traceback" not in done.stderr


def test_validate_python_tag_exits_2_and_runs_nothing(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    (tmp_path / "evil.yaml").write_text(
        f'!!python/object/apply:os.system ["touch {shlex.quote(str(target))}"]\n', encoding="utf-8"
    )
    done = knightctl(tmp_path, "validate", "evil.yaml")
    assert done.returncode == 2
    assert "not allowed" in done.stderr and "Traceback" not in done.stderr
    assert not target.exists()


def test_validate_without_a_spec_is_a_usage_error(tmp_path: Path) -> None:
    done = knightctl(tmp_path, "validate")
    assert done.returncode == 2
    assert "Usage:" in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------------------------
# no heavy imports (ARCHITECTURE stance 7)


def test_validate_good_spec_imports_neither_torch_nor_mlflow(tmp_path: Path) -> None:
    report = probe_imports(tmp_path, "validate", str(ROUND_TABLE))
    assert report["code"] in (0, None), report["stderr"]
    assert report["spec_loaded"], "the probe must actually have validated the spec"
    assert "name: round_table" in report["stdout"]
    assert report["heavy"] == []


def test_validate_bad_spec_imports_neither_torch_nor_mlflow(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD, encoding="utf-8")
    report = probe_imports(tmp_path, "validate", "bad.yaml")
    assert report["code"] == 2
    assert report["spec_loaded"]
    assert report["heavy"] == []


def _help_invocations() -> list[tuple[str, ...]]:
    from knightctl.cli.commands import main

    return [("--help",), ("-h",), *((name, "--help") for name in sorted(main.commands))]


@pytest.mark.parametrize("args", _help_invocations(), ids=lambda args: " ".join(args))
def test_help_imports_neither_torch_nor_mlflow(tmp_path: Path, args: tuple[str, ...]) -> None:
    report = probe_imports(tmp_path, *args)
    assert report["code"] in (0, None), report["stderr"]
    assert report["cli_loaded"]
    assert "Usage:" in report["stdout"]
    assert report["heavy"] == []


def test_every_command_is_covered_by_the_help_check() -> None:
    names = {args[0] for args in _help_invocations() if args[0] not in ("--help", "-h")}
    assert {"train", "validate"} <= names


def test_the_import_probe_does_see_heavy_imports(tmp_path: Path) -> None:
    """Control: the probe reports a module named torch once one is imported (so [] above means
    something). A stub in the working directory stands in for torch, to keep this fast."""
    (tmp_path / "torch.py").write_text("", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", "import torch\n" + _IMPORT_PROBE, "--help"],
        cwd=tmp_path,
        env=environment(_env()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = [x for x in done.stderr.splitlines() if x.startswith("IMPORT-PROBE ")][-1]
    assert json.loads(line.removeprefix("IMPORT-PROBE "))["heavy"] == ["torch"]


# --------------------------------------------------------------------------------------------
# regressions: bugs found while writing these tests, fixed since


@pytest.mark.parametrize(
    "description",
    [
        "see [bold]this[/bold] and [link]",
        "[/oops]",
        "x" * 120,
        " ".join(["word"] * 40),
    ],
    ids=["markup", "stray-closing-tag", "long-word", "long-sentence"],
)
def test_printed_spec_survives_markup_and_long_lines(tmp_path: Path, description: str) -> None:
    text = VALID.replace("name: knights\n", f"name: knights\ndescription: {json.dumps(description)}\n")
    (tmp_path / "spec.yaml").write_text(text, encoding="utf-8")
    done = knightctl(tmp_path, "validate", "spec.yaml", columns=None)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert resolved_yaml(done.stdout)["description"] == description


def test_validate_unhashable_key_exits_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(VALID + "[a, b]: 1\n", encoding="utf-8")
    done = knightctl(tmp_path, "validate", "bad.yaml")
    assert "Traceback" not in done.stderr
    assert done.returncode == 2
