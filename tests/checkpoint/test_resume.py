"""Stopping and resuming as a user does it: real `knightctl` processes, real signals, a real sqlite store.

A test-only layer (tests/plugins/step_gate.py) holds one training step until the test releases
it, so every signal lands mid-step at a known step; the run straight through, trained in this
process from the same seed, is the reference the resumed run must match bit for bit.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from processes import run_knightctl, start_knightctl, wait_until

from knightctl.checkpoint.files import load_checkpoint
from knightctl.errors import CheckpointError, ResumeError
from knightctl.training.run import train

ROOT = Path(__file__).resolve().parents[2]
GATE_PLUGIN = ROOT / "tests" / "plugins" / "step_gate.py"
STEPS_PER_EPOCH = 8  # 256 training rows in batches of 32
EPOCHS = 6


def write_spec(folder: Path, *, seed: str = "seed: 7", layer: str = "test_gate") -> Path:
    spec = folder / "gated.yaml"
    spec.write_text(f"""
name: gated
{seed}
plugins: [{GATE_PLUGIN}]
data: {{name: battles, n_samples: 320, noise: 0.1, val_fraction: 0.2}}
model:
  - {{type: linear, in_features: 2, out_features: 8}}
  - relu
  - {{type: dropout, p: 0.1}}
  - {layer}
  - {{type: linear, in_features: 8, out_features: 1}}
loss: bce_with_logits
optimizer: {{name: adam, lr: 0.05, scheduler: {{name: step, step_size: 2, gamma: 0.5}}}}
train: {{epochs: {EPOCHS}, batch_size: 32, device: cpu, log_every_n_steps: 1}}
checkpoint: {{every_n_epochs: 1, keep_last: 2}}
tracking: {{log_model: false}}
""")
    return spec


def start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    return start_knightctl(*args, cwd=cwd, env={"MLFLOW_TRACKING_URI": "", **env})


def knightctl(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_knightctl(*args, cwd=cwd, env={"MLFLOW_TRACKING_URI": "", **env}, timeout=300)


def hold_step(tmp_path: Path, step: int) -> tuple[subprocess.Popen[str], Path]:
    """Start training the gated spec; return once training step `step` is being held."""
    gate = tmp_path / "gate"
    gate.mkdir()
    process = start(
        ["train", str(write_spec(tmp_path)), "--skip-gradcheck"],
        tmp_path,
        KNIGHTCTL_GATE_STEP=str(step),
        KNIGHTCTL_GATE_DIR=str(gate),
    )
    wait_until((gate / "reached").exists, 120, what="the gated step", process=process, interval_s=0.02)
    return process, gate


def signal_handled(process: subprocess.Popen[str], gate: Path, sig: signal.Signals) -> None:
    """Send `sig` to the held run; return once its handler has run (tests/plugins/step_gate.py)."""
    handled = gate / "handled-0"
    before = handled.read_text().count("\n") if handled.exists() else 0
    process.send_signal(sig)
    wait_until(
        lambda: handled.exists() and handled.read_text().count("\n") > before,
        60,
        what=f"{sig.name} handled in the held step",
        process=process,
        interval_s=0.01,
    )


def only_run(tmp_path: Path) -> tuple[MlflowClient, object]:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("gated").experiment_id])
    return client, run


def reference(tmp_path: Path) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The run straight through, in this process: every step's loss and the final weights."""
    result = train(
        write_spec(tmp_path / "reference"),
        track=False,
        record_losses=True,
        skip_gradcheck=True,
        checkpoint_dir=tmp_path / "reference",
    )
    assert result.step_losses is not None and result.checkpoint is not None
    return result.step_losses, load_checkpoint(result.checkpoint)["model"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "step"),
    [(signal.SIGINT, 130, 13), (signal.SIGTERM, 143, 16)],
    ids=["SIGINT-mid-epoch", "SIGTERM-epoch-end"],
)
def test_a_signal_finishes_the_step_checkpoints_and_the_resumed_run_is_bit_identical(
    tmp_path: Path, sig: signal.Signals, code: int, step: int
) -> None:
    (tmp_path / "reference").mkdir()
    losses, weights = reference(tmp_path)
    process, gate = hold_step(tmp_path, step)
    signal_handled(process, gate, sig)  # the signal is handled while the step is held: the step must still finish
    (gate / "release").touch()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    client, run = only_run(tmp_path)
    run_id = run.info.run_id
    assert f"interrupted at epoch {(step - 1) // STEPS_PER_EPOCH + 1} (step {step})" in stderr
    assert f"resume with: knightctl train --resume {run_id}" in stderr and "Traceback" not in stderr
    assert "\x1b[" not in stderr  # not a terminal: no escape codes (FAULTS 29)
    checkpoint = tmp_path / "checkpoints" / run_id / f"step-{step:09d}.pt"
    assert checkpoint.exists() and load_checkpoint(checkpoint)["step"] == step
    assert (
        run.info.status == "KILLED"
        and f"| status | KILLED: {sig.name}: interrupted at epoch" in run.data.tags["mlflow.note.content"]
    )
    outcome = run.data.tags["knightctl.outcome"]  # told apart from a failure in the runs table's preview
    assert outcome.startswith(f"KILLED after {step} steps: {sig.name}: interrupted at epoch")
    assert outcome.endswith(f"resume with: knightctl train --resume {run_id}")
    assert run.data.tags["mlflow.note.content"].startswith(outcome + "\n")
    assert "plots/training_curves.png" in [a.path for a in client.list_artifacts(run_id, "plots")]

    resumed = knightctl(["train", "--resume", run_id], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {step}" in resumed.stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
    assert [s for s, _ in history] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))  # each step once, none lost
    assert [v for _, v in history] == losses  # exactly: a resumed run takes the same steps
    final = load_checkpoint(tmp_path / "checkpoints" / run_id / f"step-{EPOCHS * STEPS_PER_EPOCH:09d}.pt")
    assert all(torch.equal(final["model"][name], tensor) for name, tensor in weights.items())
    assert "| resumed from | step " in run.data.tags["mlflow.note.content"]


@pytest.mark.slow
def test_a_second_sigint_stops_at_once_without_a_checkpoint(tmp_path: Path) -> None:
    process, gate = hold_step(tmp_path, 13)
    signal_handled(process, gate, signal.SIGINT)
    process.send_signal(signal.SIGINT)  # the step is still held: only the second signal can end it
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "SIGINT again: stopped at once, without a checkpoint" in stderr
    client, run = only_run(tmp_path)
    assert run.info.status == "KILLED"
    folder = tmp_path / "checkpoints" / run.info.run_id
    assert sorted(p.name for p in folder.iterdir()) == [
        "step-000000008.pt"
    ]  # the end of epoch 1, and no half-written file
    assert f"the last checkpoint is {folder / 'step-000000008.pt'}" in stderr


@pytest.mark.slow
def test_after_sigkill_the_last_checkpoint_is_whole_and_resume_takes_over_the_stale_run(tmp_path: Path) -> None:
    process, _ = hold_step(tmp_path, 13)
    process.kill()
    process.communicate(timeout=60)
    client, run = only_run(tmp_path)
    assert run.info.status == "RUNNING"  # nobody could close it
    folder = tmp_path / "checkpoints" / run.info.run_id
    assert load_checkpoint(folder / "step-000000008.pt")["step"] == 8

    resumed = knightctl(["train", "--resume", run.info.run_id], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))


def test_checkpoints_survive_sigkill_in_the_middle_of_writing(tmp_path: Path) -> None:
    """A process rewriting one large checkpoint is killed at several moments: the file is always whole."""
    script = tmp_path / "writer.py"
    script.write_text(
        "import sys, torch\nfrom pathlib import Path\nfrom knightctl.checkpoint import save_checkpoint\n"
        "target = Path(sys.argv[1])\nversion = 0\n"
        "while True:\n    version += 1\n"
        "    save_checkpoint({'format_version': 2, 'version': version, "
        "'weights': torch.full((4_000_000,), float(version))}, target)\n"
        "    Path(sys.argv[2]).write_text(str(version))\n"
    )
    target, progress = tmp_path / "big.pt", tmp_path / "written"
    for delay in (0.05, 0.13, 0.31):
        writer = subprocess.Popen([sys.executable, str(script), str(target), str(progress)])
        wait_until(
            progress.exists, 60, what="a checkpoint written", process=writer, interval_s=0.01
        )  # the first version is written
        time.sleep(delay)  # the moment of the kill: what this test varies
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        state = load_checkpoint(target)  # verified: complete, one version or the next
        assert torch.equal(state["weights"], torch.full((4_000_000,), float(state["version"])))
        progress.unlink()


@pytest.mark.slow
def test_resuming_with_a_changed_spec_is_refused_with_the_difference_unless_allowed(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    train(spec, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", skip_gradcheck=True)
    client, run = only_run(tmp_path)
    run_id = run.info.run_id

    with pytest.raises(
        ResumeError, match=f"already trained all {EPOCHS} epochs"
    ):  # (exit 2 through the command, as below)
        train(resume=run_id, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    changed = knightctl(
        ["train", str(spec), "--resume", run_id, "--set", "optimizer.lr=0.01", "--set", f"train.epochs={EPOCHS + 2}"],
        tmp_path,
    )
    assert changed.returncode == 2, changed.stderr
    assert (
        "optimizer.lr: 0.05 -> 0.01" in changed.stderr and f"train.epochs: {EPOCHS} -> {EPOCHS + 2}" in changed.stderr
    )
    assert "--allow-spec-change" in changed.stderr
    assert client.get_run(run_id).info.status == "FINISHED"  # untouched

    allowed = knightctl(
        ["train", "--resume", run_id, "--set", f"train.epochs={EPOCHS + 2}", "--allow-spec-change", "--skip-gradcheck"],
        tmp_path,
    )
    assert allowed.returncode == 0, allowed.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["knightctl.spec_changes"] == f"train.epochs: {EPOCHS} -> {EPOCHS + 2}"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert steps == list(range(1, (EPOCHS + 2) * STEPS_PER_EPOCH + 1))


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_a_damaged_checkpoint_is_an_error_on_resume_never_a_fresh_start(tmp_path: Path, damage: str) -> None:
    result = train(
        write_spec(tmp_path),
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        stop_at_step=13,
        skip_gradcheck=True,
        checkpoint_dir=tmp_path / "checkpoints",
    )
    newest = result.checkpoint
    assert newest is not None and newest.name == "step-000000013.pt"
    data = newest.read_bytes()
    client, _ = only_run(tmp_path)
    if damage == "truncated":  # as the user meets it, through the command
        newest.write_bytes(data[: len(data) // 2])
        done = knightctl(["train", "--resume", str(result.run_id)], tmp_path)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        message = done.stderr
    else:
        newest.write_bytes(data[:1000] + bytes([data[1000] ^ 0x01]) + data[1001:])
        with pytest.raises(CheckpointError) as failure:
            train(resume=str(result.run_id), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
        message = str(failure.value)
    assert f"{newest}: {damage}" in message
    assert f"knightctl train --resume {newest.parent / 'step-000000008.pt'}" in message  # the way on
    assert sorted(p.name for p in newest.parent.iterdir()) == [
        "step-000000008.pt",
        "step-000000013.pt",
    ]  # nothing trained
    assert (
        client.get_run(str(result.run_id)).info.status == "FINISHED"
        and len(client.search_runs([client.get_experiment_by_name("gated").experiment_id])) == 1
    )


def test_verify_resume_reports_bit_identical_results(tmp_path: Path) -> None:
    done = knightctl(
        ["train", str(write_spec(tmp_path)), "--verify-resume", "--no-track", "--skip-gradcheck"],
        tmp_path,
        NO_COLOR="1",
    )
    assert done.returncode == 0, done.stderr
    assert (
        f"resume verified: stopped at step {EPOCHS * STEPS_PER_EPOCH // 2 + 1} (epoch 4, after batch 1)" in done.stdout
    )
    assert f"all {EPOCHS * STEPS_PER_EPOCH} step losses" in done.stdout and "bit-identical" in done.stdout


def test_verify_resume_notices_state_kept_outside_the_checkpoint(tmp_path: Path) -> None:
    from knightctl.checkpoint.verify import verify_resume

    verdict = verify_resume(write_spec(tmp_path, layer="test_drift"), track=False, skip_gradcheck=True)
    assert not verdict.identical
    assert verdict.first_difference is not None and verdict.first_difference.startswith(
        f"step {verdict.stopped_at_step + 1}: loss"
    )
