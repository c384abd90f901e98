"""DDP scaling: the 784-512-512-10 MLP (mlp_blobs.yaml) in 2 CPU processes against 1, same global batch.

Both run through the command line without tracking, so that only training differs: one process
with every core as its torch threads, against `--nproc-per-node 2` with half the cores each. The
figure is the training loop's own time (the summary's "training loop" seconds: steps, evaluations
and checkpoints, not start-up), in A-B-B-A order. Scaling efficiency is speedup / processes: 1.0
would be perfect; on a 2-core machine the two ranks share the cores one process had, so what is
measured is how well DDP's gradient all-reduce overlaps and splits the work, not more hardware.

For scale, the same comparison in plain PyTorch (the model, batch 128 split in two, Adam, gloo,
no evaluation or checkpoints) shows what DDP itself gains or loses on this machine.

    python benchmarks/ddp_scaling.py [--pairs 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SPEC = Path(__file__).resolve().parent / "mlp_blobs.yaml"
_LOOP_SECONDS = re.compile(r"training loop ([\d.]+) s")


def loop_seconds(processes: int, epochs: int) -> float:
    command = [sys.executable, "-m", "knightctl", "train", str(SPEC), "--no-track", "--set", f"train.epochs={epochs}"]
    if processes > 1:
        command += ["--nproc-per-node", str(processes)]
    cores = os.cpu_count() or 1
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "OMP_NUM_THREADS": str(max(1, cores // processes))}
    with tempfile.TemporaryDirectory(prefix="knightctl-benchmark-") as folder:
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, check=True)
    found = _LOOP_SECONDS.search(done.stdout)
    if found is None:
        raise SystemExit(f"no 'training loop' time in the output:\n{done.stdout}\n{done.stderr}")
    return float(found.group(1))


# Plain PyTorch: seconds for STEPS training steps of the MLP on a global batch of 128, in one process
# or as one of several DDP ranks (each with its slice of the batch).
_PLAIN = """
import os, sys, time, torch
from torch import nn
steps, distributed = int(sys.argv[1]), "RANK" in os.environ
world = int(os.environ.get("WORLD_SIZE", 1))
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
trained = model
if distributed:
    torch.distributed.init_process_group("gloo")
    trained = nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True)
x, y = torch.randn(128 // world, 784), torch.randint(0, 10, (128 // world,))
optimizer, loss_fn = torch.optim.Adam(model.parameters(), 1e-3), nn.CrossEntropyLoss()
for count in (10, steps):
    started = time.perf_counter()
    for _ in range(count):
        optimizer.zero_grad()
        loss_fn(trained(x), y).backward()
        optimizer.step()
if os.environ.get("RANK", "0") == "0":
    print(time.perf_counter() - started)
if distributed:
    torch.distributed.destroy_process_group()
"""


def plain_seconds(processes: int, steps: int) -> float:
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // processes))}
    with tempfile.TemporaryDirectory(prefix="knightctl-benchmark-") as folder:
        script = Path(folder) / "plain.py"
        script.write_text(_PLAIN)
        launcher = (
            ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else []
        )
        done = subprocess.run(
            [sys.executable, *launcher, str(script), str(steps)], env=env, capture_output=True, text=True, check=True
        )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    speedups = []
    for _ in range(args.pairs):
        a1, b1, b2, a2 = (loop_seconds(n, args.epochs) for n in (1, args.processes, args.processes, 1))
        speedups.append((a1 + a2) / (b1 + b2))
        print(
            f"1 process: {(a1 + a2) / 2:.2f} s; {args.processes} processes: {(b1 + b2) / 2:.2f} s; "
            f"speedup {speedups[-1]:.2f}x, efficiency {speedups[-1] / args.processes:.2f}",
            flush=True,
        )
    speedup = statistics.median(speedups)
    print(
        f"median over {args.pairs} pairs ({os.cpu_count()} cores): "
        f"{args.processes} DDP processes train {speedup:.2f}x as fast as 1; "
        f"scaling efficiency {speedup / args.processes:.2f}",
        flush=True,
    )
    steps = args.epochs * 63  # mlp_blobs: 8,000 training rows in batches of 128
    plain = []
    for _ in range(args.pairs):
        a1, b1, b2, a2 = (plain_seconds(n, steps) for n in (1, args.processes, args.processes, 1))
        plain.append((a1 + a2) / (b1 + b2))
    speedup = statistics.median(plain)
    print(
        f"plain PyTorch, the same model and batch ({steps} steps, median of {args.pairs} pairs): "
        f"{args.processes} DDP processes train "
        f"{speedup:.2f}x as fast as 1; scaling efficiency {speedup / args.processes:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
