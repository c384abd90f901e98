"""A 4-trial sweep of the chapter's model with --workers 2 against the same 4 trials run one after another.

"One after another" is measured two ways, each as a user would run it, through the command line,
with a fresh sqlite store and model logging on:
- four `knightctl train SPEC --set ...` commands in a row (each pays its own start-up: torch,
  MLflow, the store);
- `knightctl sweep --workers 1` (one worker process runs the four trials in turn).
against `knightctl sweep --workers 2`. Figures are ratios of wall times, in A-B-B-A order.

    python benchmarks/sweep_speed.py [--pairs 1]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = Path(__file__).resolve().parent.parent / "experiments" / "round_table.yaml"
VALUES = {"optimizer.lr": ["0.1", "0.05"], "train.batch_size": ["full", "64"]}


def _timed(commands: list[list[str]]) -> float:
    with tempfile.TemporaryDirectory(prefix="knightctl-benchmark-") as folder:
        started = time.perf_counter()
        for command in commands:
            subprocess.run(
                [sys.executable, "-m", "knightctl", *command, "--tracking-uri", f"sqlite:///{folder}/mlflow.db"],
                cwd=folder,
                check=True,
                capture_output=True,
            )
        return time.perf_counter() - started


def trains_in_a_row() -> float:
    trials = itertools.product(*([f"{path}={value}" for value in values] for path, values in VALUES.items()))
    return _timed(
        [["train", str(SPEC), *itertools.chain.from_iterable(("--set", item) for item in trial)] for trial in trials]
    )


def sweep_with(workers: int) -> float:
    grid = itertools.chain.from_iterable(("--grid", f"{path}={','.join(values)}") for path, values in VALUES.items())
    return _timed([["sweep", str(SPEC), *grid, "--workers", str(workers)]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1)
    args = parser.parse_args()
    for label, baseline in (
        ("4 knightctl train commands in a row", trains_in_a_row),
        ("knightctl sweep --workers 1", lambda: sweep_with(1)),
    ):
        ratios = []
        for _ in range(args.pairs):
            a1, b1, b2, a2 = baseline(), sweep_with(2), sweep_with(2), baseline()
            ratios.append((a1 + a2) / (b1 + b2))
            print(
                f"{label}: {(a1 + a2) / 2:.1f} s; sweep --workers 2: {(b1 + b2) / 2:.1f} s; {ratios[-1]:.2f}x faster",
                flush=True,
            )
        print(f"median: sweep --workers 2 is {statistics.median(ratios):.2f}x faster than {label}", flush=True)


if __name__ == "__main__":
    main()
