"""Shell completion as a shell drives it: `knightctl completion SHELL`, and the values completed in a
real process with the environment click's scripts set (COMP_WORDS, COMP_CWORD, _KNIGHTCTL_COMPLETE)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from processes import environment

# The `knightctl` console script's own call: click names the variable after the program, so
# `python -m knightctl` would be asked about `_PYTHON _M KNIGHTCTL_COMPLETE` instead.
KNIGHTCTL = [
    sys.executable,
    "-c",
    "import atexit, sys\n"
    "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, file=sys.stderr))\n"
    "from knightctl.cli.commands import main\nmain(prog_name='knightctl')",
]
MARKERS = {
    "bash": "complete -o nosort -F _knightctl_completion knightctl",
    "zsh": "#compdef knightctl",
    "fish": "complete --no-files --command knightctl",
}

# An op plugin that needs no torch to register, and counts the times it is imported.
PLUGIN = textwrap.dedent(
    """\
    from pathlib import Path

    from knightctl import OpDef, hookimpl

    with open(Path(__file__).with_suffix(".imports"), "a") as count:
        count.write("imported\\n")
    NAMES = ["lab::cube", "lab::cosine"]


    @hookimpl
    def register_ops(register):
        for name in NAMES:
            register(OpDef(name=name, fn=lambda x: x, sample_inputs=lambda device, dtype: [], layer=None))
    """
)


def _knightctl(*args: str, env: dict[str, str | None] | None = None, cwd: Path | None = None) -> tuple[str, str]:
    done = subprocess.run(
        [*KNIGHTCTL, *args], env=environment(env), cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


def _complete(shell: str, line: str, cwd: Path, **env: str | None) -> list[str]:
    """What click answers a TAB at the end of `line` (a trailing space: a new, empty word), in `shell`'s format."""
    words = line.split() + ([""] if line.endswith(" ") else [])
    # bash's script joins the words with newlines, zsh's with spaces; both give the word's index,
    # fish's the line and the word itself
    cword = words[-1] if shell == "fish" else str(len(words) - 1)
    out, err = _knightctl(
        env={"_KNIGHTCTL_COMPLETE": f"{shell}_complete", "COMP_WORDS": "\n".join(words), "COMP_CWORD": cword, **env},
        cwd=cwd,
    )
    assert "torch imported: False" in err
    return out.splitlines()


@pytest.mark.parametrize("shell", sorted(MARKERS))
def test_the_completion_command_prints_clicks_script_for_each_shell(shell: str) -> None:
    printed, _ = _knightctl("completion", shell)
    sourced, _ = _knightctl(env={"_KNIGHTCTL_COMPLETE": f"{shell}_source"})
    # click < 8.2 echoes its source script with one more newline at the end
    assert printed.rstrip("\n") == sourced.rstrip("\n") and MARKERS[shell] in printed
    assert "_KNIGHTCTL_COMPLETE=" in printed.replace("%(complete_var)s", "")


def test_devices_and_spec_files_complete_without_torch(tmp_path: Path) -> None:
    two_gpus = {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert _complete("bash", "knightctl train --device cu", tmp_path, **two_gpus) == [
        "plain,cuda",
        "plain,cuda:0",
        "plain,cuda:1",
    ]
    # bash splits `cuda:1` at the colon; the answer replaces only what follows it
    assert _complete("bash", "knightctl sweep s.yaml --device cuda :", tmp_path, **two_gpus) == ["plain,:0", "plain,:1"]
    assert _complete("zsh", "knightctl gradcheck --device m", tmp_path) == ["plain", "mps", "_"]
    (tmp_path / "specs").mkdir()
    for name in ("a.yaml", "specs/b.yml", "specs/notes.txt"):
        (tmp_path / name).write_text("")
    assert _complete("bash", "knightctl train ", tmp_path) == ["dir,", "plain,a.yaml"]
    assert _complete("bash", "knightctl validate specs/", tmp_path) == ["dir,specs/", "plain,specs/b.yml"]


def test_op_names_complete_from_the_plugins_loaded_once_then_cached(tmp_path: Path) -> None:
    plugins = tmp_path / "lab_plugins"
    plugins.mkdir()
    (plugins / "lab.py").write_text(PLUGIN)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "KNIGHTCTL_PLUGINS_DIR": None}
    line = "knightctl --plugins-dir lab_plugins gradcheck lab::c"
    assert _complete("zsh", line, tmp_path, **env) == [
        "plain",
        r"lab\:\:cosine",
        "from lab",
        "plain",
        r"lab\:\:cube",
        "from lab",
    ]
    # bash: `lab::co` arrives as `lab`, `::`, `co`
    assert _complete("bash", "knightctl --plugins-dir lab_plugins gradcheck lab :: co", tmp_path, **env) == [
        "plain,cosine"
    ]
    assert _complete("fish", "knightctl --plugins-dir lab_plugins gradcheck lab::cu", tmp_path, **env) == [
        "plain,lab::cube\tfrom lab"
    ]
    assert (plugins / "lab.imports").read_text() == "imported\n"  # three TABs, one import: the rest from the cache
    (cached,) = json.loads((tmp_path / "cache" / "knightctl" / "op-names.json").read_text()).values()
    assert cached == [["lab::cosine", "lab"], ["lab::cube", "lab"]]
    (plugins / "lab.py").write_text(PLUGIN.replace('"lab::cosine"', '"lab::cosine", "lab::cusp"'))
    assert _complete("bash", "knightctl --plugins-dir lab_plugins gradcheck lab :: cu", tmp_path, **env) == [
        "plain,cube",
        "plain,cusp",
    ]
    assert (plugins / "lab.imports").read_text() == "imported\nimported\n"  # a changed file is loaded again
