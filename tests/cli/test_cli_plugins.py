"""`knightctl ops`, `knightctl plugins` and the plugin options, run as a user runs them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from processes import run_knightctl

from knightctl.cli.commands import main
from knightctl.plugins.files import import_plugin_file

ROOT = Path(__file__).resolve().parents[2]


def readme_plugin_example() -> str:
    guide = (ROOT / "README.md").read_text().split("## Writing a plugin", 1)[1]
    return re.search(r"```python\n(.*?)```", guide, flags=re.S).group(1)


def test_a_plugin_written_from_the_readme_lists_and_trains_beside_a_broken_neighbour(tmp_path: Path) -> None:
    plugins = tmp_path / "my_plugins"
    plugins.mkdir()
    (plugins / "softsign.py").write_text(readme_plugin_example())
    (plugins / "broken.py").write_text("def broken(:\n")
    env = {"KNIGHTCTL_PLUGINS_DIR": "my_plugins"}
    listing = run_knightctl("ops", cwd=tmp_path, env=env)
    assert listing.returncode == 0, listing.stderr
    assert (
        "mylab::softsign  from softsign (my_plugins/softsign.py)\n    autograd.Function, elementwise layer,"
        in listing.stdout
    )
    assert "plugin 'broken'" in listing.stderr and "SyntaxError at line 1" in listing.stderr
    assert "Traceback" not in listing.stdout + listing.stderr
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        textwrap.dedent(
            """\
            name: softsign_battles
            data: {name: battles, n_samples: 200}
            model:
              - {type: linear, in_features: 2, out_features: 8}
              - mylab::softsign
              - {type: linear, in_features: 8, out_features: 1}
            loss: bce_with_logits
            optimizer: {name: adam, lr: 0.1}
            train: {epochs: 20, batch_size: full, device: cpu}
            """
        )
    )
    run = run_knightctl("train", "spec.yaml", "--no-track", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert "plugin 'broken'" in run.stderr and "softsign_battles: finished" in run.stdout


def test_the_readme_plugin_example_has_a_correct_gradient(tmp_path: Path) -> None:
    (tmp_path / "softsign.py").write_text(readme_plugin_example())
    registered: list = []
    import_plugin_file(tmp_path / "softsign.py").register_ops(registered.append)
    (op,) = registered
    for args in op.sample_inputs("cpu", torch.float64):
        x = args[0].requires_grad_()
        torch.testing.assert_close(op.fn(x), op.reference(x))
        assert torch.autograd.gradcheck(op.fn, (x,))


def test_listing_commands_never_import_mlflow() -> None:
    script = (
        "import sys\nfrom knightctl.cli import main\n"
        "for args in (['ops'], ['plugins', '--json']):\n"
        "    try:\n        main(args)\n    except SystemExit as done:\n        assert not done.code, done.code\n"
        "print('mlflow imported:', 'mlflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("mlflow imported: False")


def test_an_installed_plugin_package_arrives_through_its_entry_point(tmp_path: Path) -> None:
    package = shutil.copytree(ROOT / "plugins" / "knightctl-grail", tmp_path / "src")  # builds write beside the source
    site = tmp_path / "site"
    no_isolation = ["--no-build-isolation"] if _has_setuptools() else []  # offline when it can be
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        *no_isolation,
        "--target",
        str(site),
        str(package),
    ]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    listing = run_knightctl("plugins", "--json", cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert listing.returncode == 0, listing.stderr
    grail = next(info for info in json.loads(listing.stdout) if info["name"] == "grail")
    assert grail["source"] == "entry point" and grail["origin"] == "distribution knightctl-grail 0.1.0"
    assert grail["status"] == "loaded" and grail["identity"] == "grail==0.1.0"
    assert ["op", "grail::soft_clamp"] in grail["provides"]


def _has_setuptools() -> bool:
    return subprocess.run([sys.executable, "-c", "import setuptools"], capture_output=True).returncode == 0


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(ROOT)
    for name in (
        "KNIGHTCTL_PLUGINS_DIR",
        "KNIGHTCTL_DISABLE_PLUGINS",
        "KNIGHTCTL_NO_EXTERNAL_PLUGINS",
        "KNIGHTCTL_STRICT_PLUGINS",
    ):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def test_plugin_options_disable_one_plugin_or_every_external_one(runner: CliRunner) -> None:
    everything = runner.invoke(main, ["ops", "--json"])
    assert everything.exit_code == 0, everything.output
    names = {row["name"] for row in json.loads(everything.output)}
    assert {"knight::smooth_relu", "knight::swish"} <= names
    without_swish = runner.invoke(main, ["--disable-plugin", "swish", "ops", "--json"])
    assert {row["name"] for row in json.loads(without_swish.output)} == names - {"knight::swish"}
    builtin_only = runner.invoke(main, ["--no-external-plugins", "plugins", "--json"])
    assert {info["source"] for info in json.loads(builtin_only.output)} == {"default"}


def test_a_failing_plugin_under_strict_mode_exits_2_naming_it(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import knightctl_no_such_module\n")
    result = runner.invoke(main, ["--plugins-dir", str(tmp_path), "--strict-plugins", "ops"])
    assert result.exit_code == 2
    assert (
        "strict plugin mode" in result.output
        and "broken" in result.output
        and "knightctl_no_such_module" in result.output
    )


def test_validate_resolves_a_spec_that_uses_plugin_ops(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--no-external-plugins", "validate", "experiments/excalibur.yaml"])
    assert result.exit_code == 2  # the spec needs its plugin files, and they are switched off
    assert "plugins.0: plugin 'sigmoid_gate' is disabled" in result.output
    result = runner.invoke(main, ["validate", "experiments/excalibur.yaml"])
    assert result.exit_code == 0, result.output
    assert "type: knight::smooth_relu" in result.output and "beta: 2.0" in result.output
