"""The plugin loader: order, idempotence, entry points, directories, isolation, duplicates, strict mode."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from plugin_specs import spec_text

from knightctl.errors import PluginError, SpecError
from knightctl.plugins.loader import load
from knightctl.plugins.system import PluginSettings
from knightctl.spec.model import load_spec

ROOT = Path(__file__).resolve().parents[2]

GOOD_OP = """
import torch
from knightctl import OpDef, hookimpl

def {fn}(x):
    return torch.clamp(x, -1.0, 1.0)

@hookimpl
def register_ops(register):
    register(OpDef(name="{name}", fn={fn}, sample_inputs=lambda device, dtype: \
[(torch.zeros(3, device=device, dtype=dtype),)]))
"""

BROKEN = {
    "syntax.py": "def broken(:\n",
    "missing_dep.py": "import knightctl_no_such_module\n",
    "typo.py": "from knightctl import hookimpl\n\n@hookimpl\ndef register_op(register):\n    pass\n",
    "wrong_arg.py": "from knightctl import hookimpl\n\n@hookimpl\ndef register_ops(registr):\n    pass\n",
    "raises.py": "from knightctl import hookimpl\n\n@hookimpl\ndef register_ops(register):\n    {}['beta']\n",
    "bad_name.py": GOOD_OP.format(fn="f", name="no_namespace"),
}
EXPECTED_ERRORS = {
    "syntax": "import failed: SyntaxError at line 1",
    "missing_dep": "import failed: ModuleNotFoundError at line 1: No module named 'knightctl_no_such_module'",
    "typo": "@hookimpl 'register_op' is not a knightctl hook; did you mean 'register_ops'?",
    "wrong_arg": "hook 'register_ops' asks for argument 'registr', which it does not get; it gets (register)",
    "raises": "raised in hook register_ops: KeyError at line 5: 'beta'",
    "bad_name": "op names are 'namespace::name'",
}


def plugin_dir(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real distribution on sys.path (a .dist-info with an entry point), no pluggy mocking.

    Tests load with reload=True: loads are cached per settings, and an earlier test may have
    loaded the same settings before this distribution existed.
    """
    site = plugin_dir(tmp_path / "site", {"knightctl_testdist.py": GOOD_OP.format(fn="clip", name="dist::clip")})
    info = plugin_dir(site / "knightctl_testdist-1.2.3.dist-info", {})
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: knightctl-testdist\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[knightctl]\ntestdist = knightctl_testdist\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "knightctl_testdist", raising=False)
    return site


def test_load_order_is_defaults_then_entry_points_then_directories_then_spec_files(
    tmp_path: Path, installed: Path
) -> None:
    directory = plugin_dir(
        tmp_path / "dir",
        {"b_dir.py": GOOD_OP.format(fn="b", name="dir::b"), "a_dir.py": GOOD_OP.format(fn="a", name="dir::a")},
    )
    spec_file = (
        plugin_dir(tmp_path / "extra", {"from_spec.py": GOOD_OP.format(fn="s", name="spec::s")}) / "from_spec.py"
    )
    system = load(PluginSettings(dirs=(directory,)), files=[spec_file], reload=True)
    sources = [(info.name, info.source) for info in system.plugins]
    assert sources[:5] == [
        ("builtin.layers", "default"),
        ("builtin.losses", "default"),
        ("builtin.optimizers", "default"),
        ("builtin.datasets", "default"),
        ("builtin.metrics", "default"),
    ]
    assert sources[5:] == [
        ("testdist", "entry point"),
        ("a_dir", "directory"),
        ("b_dir", "directory"),
        ("from_spec", "spec"),
    ]
    assert system.info("testdist").origin == "distribution knightctl-testdist 1.2.3"
    assert system.info("testdist").identity == "testdist==1.2.3"
    assert system.info("a_dir").identity.startswith("a_dir@sha256:")
    assert system.registry.get("op", "dist::clip").plugin == "testdist"
    assert system.registry.get("layer", "spec::s").plugin == "from_spec"  # every op is also a layer


def test_loading_is_idempotent_and_executes_a_file_once(tmp_path: Path) -> None:
    counter = tmp_path / "executions"
    source = GOOD_OP.format(fn="c", name="count::c") + f"\nopen({str(counter)!r}, 'a').write('x')\n"
    settings = PluginSettings(dirs=(plugin_dir(tmp_path / "dir", {"counted.py": source}),))
    first = load(settings)
    assert load(settings) is first
    again = load(settings, reload=True)
    assert again is not first and again.registry.names("op") == first.registry.names("op")
    assert counter.read_text() == "x"  # a second execution would redefine its custom ops, which torch refuses


def test_a_failing_plugin_is_left_out_whole_and_named_while_the_others_load(tmp_path: Path) -> None:
    half = (
        GOOD_OP.format(fn="h", name="half::good")
        + "\n@hookimpl\ndef register_layers(register):\n    raise RuntimeError('late')\n"
    )
    files = {**BROKEN, "good.py": GOOD_OP.format(fn="g", name="good::g"), "half.py": half}
    system = load(PluginSettings(dirs=(plugin_dir(tmp_path / "dir", files),)))
    assert system.registry.get("op", "good::g") is not None
    assert system.registry.get("op", "half::good") is None  # its first hook succeeded; the plugin still left whole
    failed = {info.name: info.error for info in system.failures}
    assert set(failed) == {*EXPECTED_ERRORS, "half"}
    for name, expected in EXPECTED_ERRORS.items():
        assert expected in failed[name], (name, failed[name])
    assert failed["half"] == "raised in hook register_layers: RuntimeError at line 14: late"
    assert system.warnings()[0].startswith("plugin 'bad_name' (")
    assert "failed to load, so possibly the missing one: bad_name" in system.registry.unknown_name_message("op", "x::y")


def test_strict_mode_makes_any_failure_an_error(tmp_path: Path) -> None:
    settings = PluginSettings(dirs=(plugin_dir(tmp_path / "dir", {"syntax.py": BROKEN["syntax.py"]}),), strict=True)
    with pytest.raises(
        PluginError,
        match=r"strict plugin mode: 1 plugin\(s\) failed to load:\n  - syntax \(.*syntax.py\): import failed",
    ):
        load(settings)
    assert PluginSettings.from_env({"KNIGHTCTL_STRICT_PLUGINS": "1"}).strict


def test_two_plugins_registering_one_name_is_an_error_naming_both(tmp_path: Path) -> None:
    files = {"first.py": GOOD_OP.format(fn="f", name="twin::op"), "second.py": GOOD_OP.format(fn="s", name="twin::op")}
    with pytest.raises(
        PluginError, match="the op 'twin::op' is registered twice: by plugin 'first' and by plugin 'second'"
    ):
        load(PluginSettings(dirs=(plugin_dir(tmp_path / "dir", files),)))
    layer = (
        "from knightctl import LayerDef, hookimpl\n\n@hookimpl\ndef register_layers(register):\n"
        "    register(LayerDef(name='clash::act', build=print))\n"
    )
    clash_with_layer = {"a_layer.py": layer, "b_op.py": GOOD_OP.format(fn="r", name="clash::act")}
    with pytest.raises(
        PluginError, match="the layer 'clash::act' is registered twice: by plugin 'a_layer' and by plugin 'b_op'"
    ):
        load(PluginSettings(dirs=(plugin_dir(tmp_path / "other", clash_with_layer),)))  # an op is a layer too


def test_plugins_can_be_disabled_one_by_one_or_all_external_ones(tmp_path: Path, installed: Path) -> None:
    directory = plugin_dir(
        tmp_path / "dir", {"syntax.py": BROKEN["syntax.py"], "good.py": GOOD_OP.format(fn="g", name="good::g")}
    )
    system = load(
        PluginSettings(dirs=(directory,), disabled=frozenset({"syntax", "testdist", "nonesuch"})), reload=True
    )
    statuses = {info.name: info.status for info in system.plugins}
    assert statuses["syntax"] == statuses["testdist"] == "disabled" and statuses["good"] == "loaded"
    assert not system.failures  # a disabled plugin is never imported
    assert system.notes == ("--disable-plugin nonesuch: no plugin has that name",)
    builtin_only = load(PluginSettings(dirs=(directory,), external=False), reload=True)
    assert {info.source for info in builtin_only.plugins} == {"default"}
    from_env = PluginSettings.from_env(
        {"KNIGHTCTL_PLUGINS_DIR": f"a{__import__('os').pathsep}b", "KNIGHTCTL_DISABLE_PLUGINS": "x, y"}
    )
    assert from_env.dirs == (Path("a"), Path("b")) and from_env.disabled == {"x", "y"}
    assert from_env.override(dirs=["c"], disable=["z"], no_external=True) == PluginSettings(
        (Path("c"),), frozenset("xyz"), False, False
    )


def test_a_missing_default_directory_is_quiet_but_a_named_missing_one_is_noted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load(PluginSettings()).notes == ()
    assert load(PluginSettings(dirs=(Path("nope"),))).notes == (f"plugin directory {tmp_path / 'nope'} does not exist",)


def test_a_spec_loads_the_plugin_files_it_lists_relative_to_itself(tmp_path: Path) -> None:
    plugin_dir(tmp_path / "ops", {"clipper.py": GOOD_OP.format(fn="clip", name="spec::clip")})
    (tmp_path / "specs").mkdir()
    spec_path = tmp_path / "specs" / "s.yaml"
    spec_path.write_text(spec_text(["../ops/clipper.py"], "spec::clip"))
    spec = load_spec(spec_path, plugins=PluginSettings(dirs=()))
    assert spec.plugins == ("../ops/clipper.py",)
    assert spec.plugin_paths() == [(tmp_path / "ops" / "clipper.py").resolve()]


def test_a_spec_needs_its_plugin_files_so_their_failures_are_spec_errors(tmp_path: Path) -> None:
    plugin_dir(tmp_path, {"syntax.py": BROKEN["syntax.py"]})
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(spec_text(["syntax.py", "absent.py"], "relu"))
    with pytest.raises(SpecError) as caught:
        load_spec(spec_path, plugins=PluginSettings(dirs=()))
    message = str(caught.value)
    assert "s.yaml:2:11: plugins.0: plugin 'syntax' failed to load: import failed: SyntaxError at line 1" in message
    assert "s.yaml:2:24: plugins.1: no plugin file 'absent.py'" in message
    with pytest.raises(SpecError, match="plugins.0: plugin 'syntax' is disabled"):
        load_spec(spec_path, plugins=PluginSettings(dirs=(), external=False))


def test_an_unknown_op_names_the_failed_plugins_that_might_have_provided_it(tmp_path: Path) -> None:
    settings = PluginSettings(dirs=(plugin_dir(tmp_path / "dir", {"syntax.py": BROKEN["syntax.py"]}),))
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(spec_text([], "mylab::smooth"))
    with pytest.raises(SpecError) as caught:
        load_spec(spec_path, plugins=settings)
    message = str(caught.value)
    assert "model.1.type: unknown layer 'mylab::smooth'" in message
    assert "failed to load, so possibly the missing one: syntax (" in message and "SyntaxError at line 1" in message


def test_the_repository_plugins_load_from_the_default_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    system = load(PluginSettings(), reload=True)
    assert not system.failures
    ops = system.registry.names("op")
    assert len(ops) >= 6 and {"knight::smooth_relu", "knight::sigmoid_gate", "knight::sign_ste"} <= set(ops)
    # The same files named by a spec load once, under their directory entry: no duplicate ops.
    with_spec_files = load(PluginSettings(), files=[ROOT / "plugins" / "smooth_relu.py"])
    assert with_spec_files.registry.names("op") == ops


def test_an_installed_plugin_that_fails_to_import_is_named_by_its_entry_point(tmp_path: Path, installed: Path) -> None:
    (installed / "knightctl_testdist_broken.py").write_text("raise ImportError('needs the holy grail')\n")
    (installed / "knightctl_testdist-1.2.3.dist-info" / "entry_points.txt").write_text(
        "[knightctl]\ntestdist = knightctl_testdist\nbroken_dist = knightctl_testdist_broken\n"
    )
    system = load(PluginSettings(dirs=()), reload=True)  # a cached load predates this distribution
    (failure,) = system.failures
    assert failure.name == "broken_dist" and failure.origin == "distribution knightctl-testdist 1.2.3"
    assert failure.error == "import failed: ImportError at knightctl_testdist_broken.py:1: needs the holy grail"
    assert system.registry.get("op", "dist::clip") is not None
