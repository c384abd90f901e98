"""What a TAB costs: the `knightctl` process click's completion script starts, per kind of value.

Each case runs `knightctl` as the shell does (COMP_WORDS, COMP_CWORD, _KNIGHTCTL_COMPLETE=bash_complete)
in this checkout's ./ (so the example plugins in ./plugins), several times, and prints the median
wall time and whether torch was imported:

- a command name and a device: no plugin is loaded;
- an op name with an empty cache: the plugins are imported (and with them torch);
- an op name again: read from the cache (plugins/opnames.py), nothing imported.

The cache goes to a temporary XDG_CACHE_HOME. For scale, `python -c pass` is timed too.

    python benchmarks/completion_speed.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KNIGHTCTL = [
    sys.executable,
    "-c",
    "import atexit, sys\n"
    "atexit.register(lambda: print('torch', 'torch' in sys.modules, file=sys.stderr))\n"
    "from knightctl.cli.commands import main\nmain(prog_name='knightctl')",
]


def tab(line: str, cache: Path) -> tuple[float, bool]:
    """Seconds one completion of `line` takes, and whether it imported torch."""
    words = line.split() + ([""] if line.endswith(" ") else [])
    env = dict(
        os.environ,
        _KNIGHTCTL_COMPLETE="bash_complete",
        COMP_WORDS="\n".join(words),
        COMP_CWORD=str(len(words) - 1),
        XDG_CACHE_HOME=str(cache),
    )
    start = time.perf_counter()
    done = subprocess.run(KNIGHTCTL, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, "torch True" in done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    repeat = parser.parse_args().repeat
    bare = [0.0] * repeat
    for i in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare[i] = time.perf_counter() - start
    print(f"{'python -c pass':<34} {statistics.median(bare) * 1000:6.0f} ms")
    op_line = "knightctl gradcheck knight::s"
    with tempfile.TemporaryDirectory() as folder:
        cases = {
            "command name": lambda i: tab("knightctl tr", Path(folder) / "none"),
            "device": lambda i: tab("knightctl train --device cu", Path(folder) / "none"),
            "op name, empty cache": lambda i: tab(op_line, Path(folder) / f"cold{i}"),
            "op name, cached": lambda i: tab(op_line, Path(folder) / "warm"),
        }
        tab(op_line, Path(folder) / "warm")  # fills the cache the last case reads
        for name, run in cases.items():
            results = [run(i) for i in range(repeat)]
            seconds = statistics.median(result[0] for result in results)
            torch_imported = any(result[1] for result in results)
            print(f"{name:<34} {seconds * 1000:6.0f} ms   torch imported: {'yes' if torch_imported else 'no'}")


if __name__ == "__main__":
    main()
