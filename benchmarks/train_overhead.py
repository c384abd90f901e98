"""knightctl's training loop against the chapter's plain PyTorch loop: the ratio of steps per second.

Both train the chapter's model (Linear(2,5), ReLU, Linear(5,1), BCEWithLogitsLoss, Adam(lr=0.1))
on the same `battles` training split for the same number of steps, in this process. knightctl
runs with tracking on (a fresh sqlite store) and default logging; its time is its training loop
(`RunResult.loop_seconds`: steps, logging windows, evaluations, queued MLflow writes and the
writer thread they wake), not the one-off run set-up. Model logging, after the loop, is off.

This VM's speed swings by up to 2x within seconds when a thread migrates between its two vCPUs,
so both loops run with the training thread pinned to one CPU (the MLflow writer process is not
pinned: it is started before the pin and may use either CPU, as it would for a user). Runs go in
pairs, in A-B-B-A order, and the figure is the median of the pairs' ratios, with the ratio of the
fastest runs beside it.

    python benchmarks/train_overhead.py [--pairs 12] [--steps 1500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from knightctl.plugins.loader import load as load_plugins
from knightctl.spec.model import load_spec
from knightctl.training.build import build_components
from knightctl.training.run import train

SPEC = Path(__file__).resolve().parent.parent / "experiments" / "round_table.yaml"
CHECKPOINTS = tempfile.TemporaryDirectory(prefix="knightctl-benchmark-")  # the runs' checkpoints, removed at exit


def plain_rate(x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int | None, seed: int) -> float:
    """Steps/s of the chapter's loop (mini-batched by a per-epoch permutation when asked)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1))
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    steps = 0
    started = time.perf_counter()
    for _ in range(epochs):
        if batch_size is None:
            batches = [(x, y)]
        else:
            order = torch.randperm(x.shape[0])
            batches = [
                (x[order[i : i + batch_size]], y[order[i : i + batch_size]]) for i in range(0, x.shape[0], batch_size)
            ]
        for inputs, labels in batches:
            optimizer.zero_grad()
            output = model(inputs)
            loss = criterion(output, labels)
            loss.backward()
            optimizer.step()
            steps += 1
    return steps / (time.perf_counter() - started)


class PinTrainingThread:
    """An observer that pins the calling (training) thread to one CPU for the loop, then unpins."""

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.saved = os.sched_getaffinity(0)

    def run_started(self, info: object) -> None:
        os.sched_setaffinity(0, {self.cpu})  # pid 0: this thread only, on Linux

    def epoch_completed(self, epoch: int, step: int, metrics: object) -> None:
        pass

    def run_finished(self, result: object) -> None:
        os.sched_setaffinity(0, self.saved)


def knightctl_rate(overrides: list[str], tracking_uri: str | None, cpu: int) -> float:
    result = train(
        SPEC,
        overrides=[*overrides, "tracking.log_model=false"],
        device="cpu",
        tracking_uri=tracking_uri,
        track=tracking_uri is not None,
        observers=[PinTrainingThread(cpu)],
        checkpoint_dir=CHECKPOINTS.name,
    )
    return result.steps / result.loop_seconds


def pinned_plain_rate(cpu: int, *args: object) -> float:
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        return plain_rate(*args)  # type: ignore[arg-type]
    finally:
        os.sched_setaffinity(0, saved)


def measure(label: str, batch: str, steps: int, pairs: int, tracking_uri: str | None) -> None:
    spec = load_spec(SPEC, [f"train.batch_size={batch}"])
    data = build_components(spec, load_plugins().registry, torch.device("cpu"), spec.seed or 0).data
    x, y = data.train_x, data.train_y
    batch_size = None if batch == "full" else int(batch)
    per_epoch = 1 if batch_size is None else -(-x.shape[0] // batch_size)
    epochs = max(1, steps // per_epoch)
    overrides = [f"train.batch_size={batch}", f"train.epochs={epochs}"]
    cpu = max(os.sched_getaffinity(0))
    knightctl_rate([overrides[0], "train.epochs=2"], tracking_uri, cpu)  # warm-up: imports, tables
    ratios, plain_rates, ours_rates = [], [], []
    for pair in range(pairs):
        if pair % 2 == 0:
            plain, ours = (
                pinned_plain_rate(cpu, x, y, epochs, batch_size, pair),
                knightctl_rate(overrides, tracking_uri, cpu),
            )
        else:
            ours, plain = (
                knightctl_rate(overrides, tracking_uri, cpu),
                pinned_plain_rate(cpu, x, y, epochs, batch_size, pair),
            )
        plain_rates.append(plain)
        ours_rates.append(ours)
        ratios.append(ours / plain)
    print(
        f"{label:<24} {epochs * per_epoch:>5} steps x {pairs} pairs  "
        f"plain {statistics.median(plain_rates):>6,.0f} steps/s  "
        f"knightctl {statistics.median(ours_rates):>6,.0f} steps/s  "
        f"median pair ratio {statistics.median(ratios):.3f}x  "
        f"best-run ratio {max(ours_rates) / max(plain_rates):.3f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--no-track", action="store_true", help="also time knightctl without MLflow")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds synchronisation
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, 1 torch thread; target: knightctl >= 0.95x the plain loop"
    )
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)  # MLflow puts artifacts in ./mlruns
        uri = f"sqlite:///{workdir}/bench.db"
        for batch, label in (("full", "full batch"), ("64", "batch 64")):
            measure(f"{label}, tracking on", batch, args.steps, args.pairs, uri)
            if args.no_track:
                measure(f"{label}, --no-track", batch, args.steps, args.pairs, None)


if __name__ == "__main__":
    main()
