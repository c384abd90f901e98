"""What checkpoints cost: one write (serialise, checksum, fsync, rename) and their share of a run.

1. The time to write one checkpoint of the chapter's model and of the 784-512-512-10 MLP
   (`benchmarks/mlp_blobs.yaml`, with Adam's state: about 10 MB), median of 7 writes.
2. The training loop (untracked) with the default checkpoints (`auto`, about ten a run) and with
   one after every epoch, each against only the final checkpoint, as the median ratio of A-B-B-A
   pairs in this process (this VM's speed swings too much for single runs to mean anything).

    python benchmarks/checkpoint_cost.py [--pairs 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from knightctl.checkpoint.files import save_checkpoint
from knightctl.checkpoint.state import rng_states
from knightctl.plugins.loader import load as load_plugins
from knightctl.spec.model import load_spec
from knightctl.training.build import build_components
from knightctl.training.run import train

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "chapter model": ROOT / "experiments" / "round_table.yaml",
    "784-512-512-10 MLP": ROOT / "benchmarks" / "mlp_blobs.yaml",
}


def write_seconds(spec_path: Path, folder: Path) -> tuple[float, int]:
    """Median seconds of one checkpoint write of the spec's model with its optimizer state; its bytes."""
    spec = load_spec(spec_path)
    parts = build_components(spec, load_plugins().registry, torch.device("cpu"), spec.seed or 0)
    loss = parts.loss_fn(parts.model(parts.data.train_x[:64]), parts.data.train_y[:64])
    loss.backward()
    parts.optimizer.step()  # Adam's moment buffers exist from the first step on
    state = {
        "format_version": 2,
        "step": 1,
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "rng": rng_states(),
    }
    times = []
    for _ in range(7):
        started = time.perf_counter()
        path = save_checkpoint(state, folder / "bench.pt")
        times.append(time.perf_counter() - started)
    return statistics.median(times), path.stat().st_size


def loop_seconds(every: str, folder: str) -> float:
    overrides = ["train.batch_size=64", "train.epochs=300", f"checkpoint.every_n_epochs={every}"]
    return train(
        MODELS["chapter model"],
        overrides=overrides,
        device="cpu",
        track=False,
        skip_gradcheck=True,
        checkpoint_dir=folder,
    ).loop_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="knightctl-benchmark-") as folder:
        for label, spec in MODELS.items():
            seconds, size = write_seconds(spec, Path(folder))
            print(f"{label:<20} one checkpoint: {size / 1e6:6.2f} MB in {seconds * 1000:7.1f} ms")
        loop_seconds("auto", folder)  # warm-up
        for every, label in (("auto", "auto (about 10 a run)"), ("1", "every epoch (300)")):
            ratios = []
            for _ in range(args.pairs):
                a1, b1, b2, a2 = (
                    loop_seconds("300", folder),
                    loop_seconds(every, folder),
                    loop_seconds(every, folder),
                    loop_seconds("300", folder),
                )
                ratios.append((b1 + b2) / (a1 + a2))
            shown = ", ".join(f"{r:.2f}" for r in ratios)
            print(
                f"chapter model, batch 64, 3900 steps: checkpoints {label} / only the final one = "
                f"{statistics.median(ratios):.3f}x (pairs: {shown})"
            )


if __name__ == "__main__":
    main()
