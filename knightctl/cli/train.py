"""`knightctl train`: one process, several through torch.distributed.run (--nproc-per-node), or one
rank under torchrun."""

from __future__ import annotations

import os
import sys

import click

from knightctl.cli.common import (
    SET_HELP,
    device_option,
    load_plugins_warned,
    plugin_settings,
    run_library,
    run_tracking_uri_option,
    threads_option,
)
from knightctl.cli.completion import complete_spec


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False), required=False, shell_complete=complete_spec)
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help=SET_HELP)
@device_option
@threads_option
@run_tracking_uri_option
@click.option("--no-track", is_flag=True, help="Train without MLflow.")
@click.option("--deterministic", is_flag=True, default=None, help="Use deterministic algorithms only (slower on CUDA).")
@click.option(
    "--skip-gradcheck",
    is_flag=True,
    help="Train even if an op the model uses fails its gradient check (or without checking).",
)
@click.option(
    "--resume",
    default=None,
    metavar="RUN|PATH",
    help="Go on from the newest checkpoint of a run (its MLflow run id) or a checkpoint file or folder; SPEC is then "
    "optional.",
)
@click.option(
    "--allow-spec-change",
    is_flag=True,
    help="With --resume: go on even if the spec (or --set) differs from the checkpoint's.",
)
@click.option(
    "--detect-anomaly",
    is_flag=True,
    help="Turn on autograd's anomaly mode, which names the operation that made a NaN (slow).",
)
@click.option(
    "--verify-resume",
    is_flag=True,
    help="Also train stopped halfway and resumed, and check that the result is bit-identical.",
)
@click.option(
    "--nproc-per-node",
    type=click.IntRange(1, 1024),
    default=None,
    metavar="N",
    help="Train in N processes on this machine with DistributedDataParallel (gloo on CPU, nccl on CUDA), through "
    "torch.distributed.run.",
)
@click.option(
    "--max-restarts",
    type=click.IntRange(0, 100),
    default=0,
    show_default=True,
    metavar="K",
    help="With --nproc-per-node: restart the processes up to K times after a failure, from the newest checkpoint.",
)
@click.pass_context
def train(
    ctx: click.Context,
    spec: str | None,
    overrides: tuple[str, ...],
    device: str | None,
    threads: int | str | None,
    tracking_uri: str | None,
    no_track: bool,
    deterministic: bool | None,
    skip_gradcheck: bool,
    resume: str | None,
    allow_spec_change: bool,
    detect_anomaly: bool,
    verify_resume: bool,
    nproc_per_node: int | None,
    max_restarts: int,
) -> None:
    """Train the experiment in SPEC and log it to MLflow; or go on with --resume."""
    from knightctl.console.core import ProgressObserver, make_console, render_resume_verdict, render_summary

    if spec is None and resume is None:
        raise click.UsageError("give a SPEC to train, or --resume RUN|PATH to go on with one")
    if verify_resume and (resume is not None or nproc_per_node is not None or "WORLD_SIZE" in os.environ):
        raise click.UsageError(
            "--verify-resume trains a SPEC from the start in one process; it does not combine with --resume, "
            "--nproc-per-node or torchrun"
        )
    if nproc_per_node is not None and "WORLD_SIZE" in os.environ:
        raise click.UsageError(
            "--nproc-per-node starts the processes itself; under torchrun, leave it to torchrun's own --nproc-per-node"
        )
    if max_restarts and nproc_per_node is None:
        raise click.UsageError(
            "--max-restarts goes with --nproc-per-node (under torchrun, use torchrun's own --max-restarts)"
        )
    if nproc_per_node is not None:
        from knightctl.distributed.launch import launch

        run_library(lambda: launch(_worker_args(ctx), nproc_per_node=nproc_per_node, max_restarts=max_restarts))
        return
    settings = plugin_settings()
    load_plugins_warned(settings)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone shows progress and the summary
    console = make_console()
    progress = ProgressObserver(console) if main_rank else None
    options = dict(
        device=device,
        threads=threads,
        tracking_uri=tracking_uri,
        track=not no_track,
        deterministic=deterministic,
        plugins=settings,
        skip_gradcheck=skip_gradcheck,
        detect_anomaly=detect_anomaly,
    )
    try:
        if verify_resume:
            from knightctl.checkpoint.verify import verify_resume as check_resume

            verdict = run_library(lambda: check_resume(spec, overrides=overrides, observers=[progress], **options))
            result = verdict.result
        else:
            from knightctl.training.run import train as train_experiment

            result = run_library(
                lambda: train_experiment(
                    spec,
                    overrides=overrides,
                    observers=[progress] if progress else [],
                    resume=resume,
                    allow_spec_change=allow_spec_change,
                    **options,
                )
            )
    finally:
        if progress is not None:
            progress.close()
    if not main_rank:
        return
    render_summary(console, result)
    if verify_resume:
        render_resume_verdict(console, verdict)
        if not verdict.identical:
            sys.exit(1)


def _worker_args(ctx: click.Context) -> list[str]:
    """The `knightctl ...` arguments each rank runs: this command's, less the launcher's own options."""
    root, params = ctx.find_root().obj, ctx.params
    args: list[str] = []
    args += [item for folder in root["dirs"] for item in ("--plugins-dir", folder)]
    args += [item for name in root["disable"] for item in ("--disable-plugin", name)]
    args += ["--no-external-plugins"] * bool(root["no_external"]) + ["--strict-plugins"] * bool(root["strict"])
    args.append("train")
    args += [params["spec"]] if params["spec"] else []
    args += [item for override in params["overrides"] for item in ("--set", override)]
    for option in ("device", "threads", "tracking_uri", "resume"):
        if params[option] is not None:
            args += [f"--{option.replace('_', '-')}", str(params[option])]
    for flag in ("no_track", "deterministic", "skip_gradcheck", "allow_spec_change", "detect_anomaly"):
        if params[flag]:
            args.append(f"--{flag.replace('_', '-')}")
    return args
