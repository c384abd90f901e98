"""knightctl's training loop against the chapter's plain PyTorch loop: the ratio of steps per second.

Both train the chapter's model (Linear(2,5), ReLU, Linear(5,1), BCEWithLogitsLoss, Adam(lr=0.1))
on the same `battles` training split for the same number of steps, in this process, with the
repeats interleaved (plain, knightctl, plain, knightctl, ...) so that drift hits both alike.
knightctl runs with tracking on (a fresh sqlite store) and default logging; its time is its
training loop (`RunResult.loop_seconds`: steps, metric windows, evaluations and the queued MLflow
writes), not the one-off run set-up. Model logging, which happens after the loop, is switched off
to keep repeats short.

    python benchmarks/train_overhead.py [--repeats 5] [--steps 3000]
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

from knightctl.build import build_components
from knightctl.plugins import load as load_plugins
from knightctl.spec import load_spec
from knightctl.training import train

SPEC = Path(__file__).resolve().parent.parent / "experiments" / "round_table.yaml"


def plain_loop(x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int | None, seed: int) -> float:
    """The chapter's loop (mini-batched by a per-epoch permutation when batch_size is set); seconds."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1))
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    started = time.perf_counter()
    for _ in range(epochs):
        if batch_size is None:
            batches = [(x, y)]
        else:
            order = torch.randperm(x.shape[0])
            batches = [(x[order[i : i + batch_size]], y[order[i : i + batch_size]]) for i in range(0, x.shape[0], batch_size)]
        for inputs, labels in batches:
            optimizer.zero_grad()
            output = model(inputs)
            loss = criterion(output, labels)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - started


def knightctl_loop(overrides: list[str], tracking_uri: str) -> tuple[float, int]:
    result = train(SPEC, overrides=[*overrides, "tracking.log_model=false"], device="cpu", tracking_uri=tracking_uri)
    return result.loop_seconds, result.steps


def measure(label: str, batch: str, steps: int, repeats: int, workdir: str) -> float:
    spec = load_spec(SPEC, [f"train.batch_size={batch}"])
    parts = build_components(spec, load_plugins().registry, torch.device("cpu"), spec.seed or 0)
    x, y = parts.data.train_x, parts.data.train_y
    batch_size = None if batch == "full" else int(batch)
    per_epoch = 1 if batch_size is None else -(-x.shape[0] // batch_size)
    epochs = max(1, steps // per_epoch)
    overrides = [f"train.batch_size={batch}", f"train.epochs={epochs}"]
    uri = f"sqlite:///{workdir}/bench.db"
    knightctl_loop([*overrides[:1], "train.epochs=2"], uri)  # warm-up: imports, database tables
    plain_loop(x, y, 2, batch_size, 0)
    ratios, plain_rates, ours_rates = [], [], []
    for repeat in range(repeats):
        plain_s = plain_loop(x, y, epochs, batch_size, repeat)
        ours_s, ours_steps = knightctl_loop(overrides, uri)
        plain_rates.append(epochs * per_epoch / plain_s)
        ours_rates.append(ours_steps / ours_s)
        ratios.append(ours_rates[-1] / plain_rates[-1])
    ratio = statistics.median(ratios)
    print(
        f"{label:<12} {epochs * per_epoch:>6} steps  plain {statistics.median(plain_rates):>9,.0f} steps/s  "
        f"knightctl {statistics.median(ours_rates):>9,.0f} steps/s  ratio {ratio:.3f}x "
        f"(repeats: {', '.join(f'{r:.3f}' for r in ratios)})"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: threads only add noise
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, 1 torch thread; target: knightctl >= 0.95x the plain loop")
    with tempfile.TemporaryDirectory() as workdir:
        measure("full batch", "full", args.steps, args.repeats, workdir)
        measure("batch 64", "64", args.steps, args.repeats, workdir)


if __name__ == "__main__":
    main()
