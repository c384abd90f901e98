"""What MLflow tracking costs a training run: the same training with and without it, as a ratio.

Two models, each at two logging rates:
- the chapter's model (Linear(2,5), ReLU, Linear(5,1)) on `battles` in batches of 64: 13 steps an
  epoch of about 0.4 ms each, the hardest case for a logger;
- a 784-512-512-10 MLP on `blobs` in batches of 128 (benchmarks/mlp_blobs.yaml): steps of a few ms;
- "every step": the train loss logged at every step (log_every_n_steps: 1), every value stored;
- "default": the spec's defaults (a point every 10 steps).

The tracked time is the training loop plus the wait, after it, until every queued metric is stored
(`loop_seconds + store_wait_seconds`): what logging adds to training. The untracked time is the
same loop under --no-track. Run set-up (creating the run, starting the writer process) and model
logging are left out on both sides: they cost the same whatever the run's length. Runs alternate
in A-B-B-A order and the figure is the median of the pairs' ratios; "wait" is the median time
after the loop until the last metric was stored (part of the tracked time).

For contrast, `--mlflow-direct` also times MLflow's own `log_metric` called at every step on the
chapter's model (synchronous, and with `synchronous=False`).

    python benchmarks/logging_overhead.py [--pairs 5] [--only TEXT] [--mlflow-direct]

`--only every` runs the cases whose label contains "every" (the two logged at every step).
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "chapter model, batch 64": (ROOT / "experiments" / "round_table.yaml", ["train.batch_size=64", "train.epochs=300"]),
    "784-512-512-10 MLP, batch 128": (ROOT / "benchmarks" / "mlp_blobs.yaml", ["train.epochs=8"]),
}
RATES = {"every step": ["train.log_every_n_steps=1"], "default": []}
CHECKPOINTS = tempfile.TemporaryDirectory(prefix="knightctl-benchmark-")  # the runs' checkpoints, removed at exit


def training_seconds(spec: Path, overrides: list[str], uri: str | None) -> tuple[float, int, float]:
    """(seconds of training until its metrics are stored, steps, seconds of that after the loop) for one run."""
    result = train(
        spec,
        overrides=[*overrides, "tracking.log_model=false"],
        device="cpu",
        tracking_uri=uri,
        track=uri is not None,
        skip_gradcheck=True,
        checkpoint_dir=CHECKPOINTS.name,
    )
    return result.loop_seconds + result.store_wait_seconds, result.steps, result.store_wait_seconds


def measure(label: str, spec: Path, overrides: list[str], pairs: int, uri: str) -> None:
    training_seconds(spec, [*overrides, "train.epochs=1"], uri)  # warm-up: imports, tables, caches
    ratios, tracked_times, plain_times, waits = [], [], [], []
    for pair in range(pairs):
        order = (None, uri) if pair % 2 == 0 else (uri, None)
        times = {}
        for target in order:
            times[target], steps, wait = training_seconds(spec, overrides, target)
        waits.append(wait)  # the tracked run's: an untracked run has nothing to wait for
        tracked_times.append(times[uri])
        plain_times.append(times[None])
        ratios.append(times[uri] / times[None])
    print(
        f"{label:<46} {steps:>5} steps  untracked {statistics.median(plain_times):6.2f} s  "
        f"tracked {statistics.median(tracked_times):6.2f} s (wait {statistics.median(waits):4.2f} s)  "
        f"ratio {statistics.median(ratios):.3f}x (pairs: {', '.join(f'{r:.2f}' for r in ratios)})"
    )


def mlflow_direct(uri: str, synchronous: bool, epochs: int = 30) -> float:
    """The chapter's loop at batch 64 with mlflow.log_metric every step, against the same loop bare."""
    import mlflow

    spec = load_spec(ROOT / "experiments" / "round_table.yaml", ["train.batch_size=64"])
    data = build_components(spec, load_plugins().registry, torch.device("cpu"), 42).data

    def loop(log: bool) -> float:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1))
        optimizer, criterion = torch.optim.Adam(model.parameters(), lr=0.1), nn.BCEWithLogitsLoss()
        started, step = time.perf_counter(), 0
        for _ in range(epochs):
            order = torch.randperm(data.n_train)
            for start in range(0, data.n_train, 64):
                batch = order[start : start + 64]
                optimizer.zero_grad()
                loss = criterion(model(data.train_x[batch]), data.train_y[batch])
                loss.backward()
                optimizer.step()
                step += 1
                if log:
                    mlflow.log_metric("train/loss", loss.item(), step=step, synchronous=synchronous)
        if log and not synchronous:
            mlflow.flush_async_logging()
        return time.perf_counter() - started

    bare = loop(False)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        logged = loop(True)
    return logged / bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--only", default="", help="run only the cases whose label contains this text")
    parser.add_argument("--mlflow-direct", action="store_true", help="also time MLflow's own per-step log_metric")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; store {uri}")
        for case, (spec, overrides) in CASES.items():
            for rate, rate_overrides in RATES.items():
                if args.only not in f"{case}, {rate}":
                    continue
                measure(f"{case}, {rate}", spec, [*overrides, *rate_overrides], args.pairs, uri)
        if args.mlflow_direct:
            for synchronous in (True, False):
                print(
                    f"mlflow.log_metric every step (synchronous={synchronous}): "
                    f"{mlflow_direct(uri, synchronous):.1f}x the bare loop"
                )


if __name__ == "__main__":
    main()
