"""Distributed training: `knightctl train --nproc-per-node 2` (gloo, real processes) against one process."""

from __future__ import annotations

import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from processes import run_knightctl, start_knightctl, wait_until

from knightctl.checkpoint.files import CheckpointFolder, load_checkpoint
from knightctl.distributed.launch import RankFailure, cause
from knightctl.distributed.ranks import Ranks
from knightctl.training.run import train

ROOT = Path(__file__).resolve().parents[2]
STEP_GATE = ROOT / "tests" / "plugins" / "step_gate.py"

# The chapter's model with an identity layer that can crash one rank (tests/plugins/step_gate.py).
# 320 training rows in batches of 45: seven of 45 and a last one of 5, which two ranks split 2 and 3,
# so the loss weighting of uneven shards is part of what must match.
GATED_SPEC = textwrap.dedent(
    f"""\
    name: gated
    seed: 3
    data: {{name: battles, n_samples: 400, noise: 0.1, val_fraction: 0.2}}
    plugins: [{STEP_GATE}]
    model:
      - {{type: linear, in_features: 2, out_features: 5}}
      - relu
      - test_gate
      - {{type: linear, in_features: 5, out_features: 1}}
    loss: bce_with_logits
    optimizer: {{name: adam, lr: 0.1}}
    train: {{epochs: 6, batch_size: 45, log_every_n_steps: 4}}
    checkpoint: {{every_n_epochs: 2}}
    """
)


def _knightctl(
    *args: str, crash_step: int | None = None, always: bool = False, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    env = {"NO_COLOR": "1"}
    if (
        crash_step is not None
    ):  # rank 1 raises at that step (tests/plugins/step_gate.py), in the first attempt or in all
        env.update(
            KNIGHTCTL_CRASH_STEP=str(crash_step),
            KNIGHTCTL_CRASH_RANK="1",
            **({"KNIGHTCTL_CRASH_ALWAYS": "1"} if always else {}),
        )
    return run_knightctl(*args, env=env, timeout=timeout)  # in the test's own folder


def _final_weights(folder: Path) -> dict[str, torch.Tensor]:
    newest = CheckpointFolder(folder).latest()
    assert newest is not None, f"no checkpoint in {folder}"
    return load_checkpoint(newest)["model"]


def _assert_close(distributed: dict[str, torch.Tensor], single: dict[str, torch.Tensor]) -> None:
    assert distributed.keys() == single.keys()
    for name in single:
        # Two ranks sum each batch in two halves: the same step up to float32 rounding.
        torch.testing.assert_close(
            distributed[name], single[name], rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_two_ranks_train_the_chapters_model_to_the_weights_of_one_process(tmp_path: Path) -> None:
    spec = ROOT / "experiments" / "round_table.yaml"
    done = _knightctl("train", str(spec), "--nproc-per-node", "2", "--no-track", "--set", "train.epochs=60")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "2 processes in DistributedDataParallel" in " ".join(done.stdout.split())
    assert done.stdout.count("round_table: finished") == 1  # rank 0 alone reports
    [folder] = (tmp_path / "checkpoints").iterdir()
    single = train(spec, overrides=["train.epochs=60"], track=False, checkpoint_dir=tmp_path / "single")
    assert _final_weights(folder).keys() == single.model.state_dict().keys()
    _assert_close(_final_weights(folder), single.model.state_dict())


@pytest.mark.slow
def test_a_crashing_rank_is_restarted_from_the_checkpoint_then_fails_the_job_naming_the_rank_and_the_run(
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    (tmp_path / "spec.yaml").write_text(GATED_SPEC)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Rank 1 raises at its process's 20th step in every attempt: at step 20, then (resumed at 16) at step 36.
    done = _knightctl(
        "train",
        "spec.yaml",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        "--tracking-uri",
        uri,
        crash_step=20,
        always=True,
    )
    assert done.returncode == 1, done.stderr
    assert "resuming at step 16" in " ".join(
        done.stdout.split()
    )  # the restart went on from the checkpoint after epoch 2
    error = " ".join(done.stderr.split())
    assert "distributed training failed: rank 1 exited with code 1 (then rank 0 stopped too)" in error
    assert "RuntimeError: test crash in rank 1 at step 20" in error
    assert "Traceback" not in done.stderr
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("gated").experiment_id])  # one run across both attempts
    assert run.info.status == "FAILED"
    assert run.data.tags["knightctl.failed_rank"] == "1" and run.data.tags["knightctl.restarts"] == "1"
    assert "| status | FAILED: rank 1 failed |" in run.data.tags["mlflow.note.content"]
    assert "test crash in rank 1 at step 20" in run.data.tags["mlflow.note.content"]
    stored = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "error")}
    assert "error/rank-1-traceback.txt" in stored
    assert f"knightctl train --resume {run.info.run_id} --nproc-per-node 2" in error
    # Each logged step once: 4..16 before the first crash, 20..32 (the checkpoint at 32) before the second.
    steps = [point.step for point in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == list(range(4, 33, 4))


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_at_one_step_with_a_checkpoint_and_the_job_resumes_to_the_same_weights(
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    (tmp_path / "spec.yaml").write_text(GATED_SPEC)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {"NO_COLOR": "1", "KNIGHTCTL_GATE_STEP": "22", "KNIGHTCTL_GATE_DIR": str(gate)}
    launcher = start_knightctl("train", "spec.yaml", "--nproc-per-node", "2", "--tracking-uri", uri, env=env)
    ranks = [gate / f"reached-{rank}" for rank in range(2)]
    handled = [gate / f"handled-{rank}" for rank in range(2)]
    try:
        wait_until(lambda: all(p.exists() for p in ranks), 120, what="step 22 held in both ranks", process=launcher)
        launcher.send_signal(
            signal.SIGINT
        )  # a terminal's Ctrl-C reaches knightctl; torchrun's agent passes it on, once
        # the signal lands on the ranks while step 22 is held (tests/plugins/step_gate.py records it)
        wait_until(
            lambda: all(p.exists() for p in handled), 60, what="the signal handled in both ranks", process=launcher
        )
        (gate / "release").touch()
        out, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == 130, err
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("gated").experiment_id])
    assert run.info.status == "KILLED"
    # The ranks agree once per logging window (4 steps): both stop after step 24, and rank 0 checkpoints it.
    assert [p.name for p in CheckpointFolder(tmp_path / "checkpoints" / run.info.run_id).checkpoints()][
        -1
    ] == "step-000000024.pt"
    resume = f"knightctl train --resume {run.info.run_id} --nproc-per-node 2"
    assert resume in " ".join(err.split())
    done = _knightctl(*resume.split()[1:], "--tracking-uri", uri)
    assert done.returncode == 0, done.stderr
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    single = train(tmp_path / "spec.yaml", track=False, checkpoint_dir=tmp_path / "single")
    _assert_close(_final_weights(tmp_path / "checkpoints" / run.info.run_id), single.model.state_dict())
    steps = [point.step for point in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == list(range(4, 49, 4))


def test_uneven_shards_weigh_their_rows_so_the_ranks_average_is_the_batch_mean() -> None:
    inputs, targets = torch.arange(5.0).reshape(5, 1), torch.arange(5.0)
    shards = [Ranks(rank=rank, world_size=2).shard(inputs, targets) for rank in range(2)]
    assert [len(x) for x, _, _ in shards] == [2, 3]
    assert torch.equal(torch.cat([x for x, _, _ in shards]), inputs)
    # mean over ranks of (shard mean * weight) == mean over the whole batch
    weighted = [x.mean() * weight for x, _, weight in shards]
    assert float(sum(weighted) / 2) == pytest.approx(float(inputs.mean()))
    empty = Ranks(rank=0, world_size=4).shard(inputs[:2], targets[:2])
    assert len(empty[0]) == 0 and empty[2] == 0.0


def test_the_cause_is_the_first_failure_that_is_not_a_consequence_of_another() -> None:
    crashed = RankFailure(3, 1, "RuntimeError: boom", None, peer_lost=False, traceback=None, time=105.0)
    lost = RankFailure(0, 1, "another rank of this job stopped", None, peer_lost=True, traceback=None, time=100.0)
    stopped = RankFailure(1, -15, "", None, peer_lost=False, traceback=None, time=101.0)  # the agent's SIGTERM
    assert cause([lost, stopped, crashed]) is crashed
    killed = RankFailure(2, -9, "", None, peer_lost=False, traceback=None, time=103.0)
    assert cause([lost, killed, crashed]) is killed
    assert cause([lost, stopped]) is lost  # nothing but consequences: the earliest


@pytest.mark.cuda
def test_one_rank_on_cuda_trains_through_nccl(tmp_path: Path) -> None:
    spec = ROOT / "experiments" / "round_table.yaml"
    done = _knightctl(
        "train", str(spec), "--nproc-per-node", "1", "--device", "cuda", "--no-track", "--set", "train.epochs=30"
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "cuda:0" in done.stdout and "1 processes in DistributedDataParallel" in " ".join(done.stdout.split())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_train_the_chapters_model_to_the_weights_of_one(tmp_path: Path) -> None:
    spec = ROOT / "experiments" / "round_table.yaml"
    done = _knightctl(
        "train", str(spec), "--nproc-per-node", "2", "--device", "cuda", "--no-track", "--set", "train.epochs=60"
    )
    assert done.returncode == 0, done.stderr + done.stdout
    [folder] = (tmp_path / "checkpoints").iterdir()
    single = train(spec, overrides=["train.epochs=60"], device="cuda", track=False, checkpoint_dir=tmp_path / "single")
    _assert_close(
        {k: v.cpu() for k, v in _final_weights(folder).items()},
        {k: v.cpu() for k, v in single.model.state_dict().items()},
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-restarts", "2"], "--max-restarts goes with --nproc-per-node"),
        (["--nproc-per-node", "2", "--verify-resume"], "--verify-resume trains a SPEC from the start in one process"),
    ],
)
def test_launcher_options_that_do_not_fit_are_usage_errors(args: list[str], message: str) -> None:
    from click.testing import CliRunner

    from knightctl.cli.commands import main

    done = CliRunner().invoke(main, ["train", str(ROOT / "experiments" / "round_table.yaml"), *args])
    assert done.exit_code == 2 and message in " ".join(done.output.split())
