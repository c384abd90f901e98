"""torch's CPU threads for the example specs: one thread against every core, and what `auto` picks.

Each spec in experiments/ (and any named with --spec) trains in this process without tracking or
the gradient check, once with `threads=1`, once with every core (`os.cpu_count()`) and once with
`threads="auto"` (training/threads.py), in rotating order so that a change in the machine's load
falls on all three alike. The figure is the training loop's time (`RunResult.loop_seconds`), as
the median over rounds of each round's ratios: cores / 1 thread (above 1: one thread is faster),
and auto / the better of the two in that round (1.00: auto is as fast as the better choice).

Other work on the machine changes the answer: a second thread that waits for a core busy with
something else makes every step wait. `--load N` starts N busy-looping processes for the
duration, to measure a busy machine on purpose; the load average is printed either way.

    python benchmarks/threads.py [--rounds 5] [--load 0] [--spec benchmarks/mlp_blobs.yaml] [--epochs N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "experiments").glob("*.yaml"))


def _spin() -> None:
    while True:
        pass


def loop_seconds(spec: Path, threads: int | str, epochs: int | None) -> tuple[float, int]:
    """The training loop's seconds for `spec` at `threads`, and the thread count the run trained with."""
    import torch

    from knightctl.training.run import train

    seen: list[int] = []

    class Threads:  # an observer: the count torch has once the run has started
        def run_started(self, info: object) -> None:
            seen.append(torch.get_num_threads())

        def __getattr__(self, name: str) -> object:
            return lambda *args, **kwargs: None

    overrides = [f"train.epochs={epochs}"] if epochs else []
    with tempfile.TemporaryDirectory(prefix="knightctl-benchmark-") as folder:
        result = train(
            spec,
            overrides=[*overrides, "tracking.log_model=false"],
            threads=threads,
            device="cpu",
            track=False,
            skip_gradcheck=True,
            checkpoint_dir=folder,
            observers=[Threads()],  # type: ignore[list-item]
        )
    return result.loop_seconds, seen[0]


def measure(spec: Path, rounds: int, cores: int, epochs: int | None) -> None:
    modes: list[int | str] = [1, cores, "auto"]
    times: dict[int | str, list[float]] = {mode: [] for mode in modes}
    auto_count = 0
    loop_seconds(spec, 1, epochs)  # warm-up: plugin files, first-call costs
    for index in range(rounds):
        order = modes[index % 3 :] + modes[: index % 3]
        for mode in order:
            seconds, count = loop_seconds(spec, mode, epochs)
            times[mode].append(seconds)
            if mode == "auto":
                auto_count = count
    many_over_one = [m / o for m, o in zip(times[cores], times[1], strict=True)]
    auto_over_best = [a / min(o, m) for a, o, m in zip(times["auto"], times[1], times[cores], strict=True)]
    print(
        f"{spec.relative_to(ROOT) if spec.is_relative_to(ROOT) else spec}: loop {statistics.median(times[1]):.2f} s "
        f"with 1 thread, {statistics.median(times[cores]):.2f} s with {cores}; {cores} threads / 1 thread "
        f"{statistics.median(many_over_one):.2f}x (range {min(many_over_one):.2f}-{max(many_over_one):.2f}); "
        f"auto ({auto_count} thread{'s' * (auto_count != 1)}) / the better {statistics.median(auto_over_best):.2f}x "
        f"(worst {max(auto_over_best):.2f}x)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--load", type=int, default=0, metavar="N", help="busy-looping processes meanwhile")
    parser.add_argument("--spec", type=Path, action="append", default=[], help="another spec to time (repeatable)")
    parser.add_argument("--epochs", type=int, default=None, help="override every spec's train.epochs")
    args = parser.parse_args()
    if "OMP_NUM_THREADS" in os.environ:
        print(f"note: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} caps what auto may take")
    import torch

    cores = os.cpu_count() or 1
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for spinner in spinners:
        spinner.start()
    try:
        print(
            f"torch {torch.__version__}, {cores} cores, torch's own count {torch.get_num_threads()}; "
            f"{args.load} busy processes; load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        for spec in [*EXAMPLES, *args.spec]:
            measure(spec.resolve(), args.rounds, cores, args.epochs)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        for spinner in spinners:
            spinner.terminate()


if __name__ == "__main__":
    main()
