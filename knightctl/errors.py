"""The errors knightctl raises on purpose, each carrying the exit code the CLI maps it to; and the
warning categories it warns with, for `warnings.filterwarnings(..., category=...)`.

Exit codes (see docs/faults.md): 0 success, 1 a check or the run failed, 2 bad input (spec, options,
plugin), 130 / 143 interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

from pathlib import Path


class KnightctlError(Exception):
    """Base class: a problem knightctl explains in words, never with a traceback."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class SpecError(KnightctlError):
    """The experiment spec (or an override of it) is invalid; `problems` lists every error."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{source}: {count} {noun}\n" + "\n".join(f"  {p}" for p in self.problems))


class PluginError(KnightctlError):
    """A plugin failed to load, registered something invalid, or raised inside a hook."""

    exit_code = 2


class DeviceError(KnightctlError):
    """The requested device does not exist here (never silently replaced by another)."""

    exit_code = 2


class DataError(KnightctlError):
    """The dataset is empty, missing, unreadable, or does not fit the model or loss."""

    exit_code = 2


class ModelShapeError(KnightctlError):
    """The dry forward found layers whose shapes do not fit together."""

    exit_code = 2


class TrackingError(KnightctlError):
    """MLflow could not be reached or refused what knightctl sent."""

    exit_code = 1


class SyncError(KnightctlError):
    """`knightctl sync` cannot read the journals, or a store it was told to use."""

    exit_code = 1


class RunFailed(KnightctlError):
    """Training started but failed (non-finite loss, an exception inside the loop)."""

    exit_code = 1


class CheckpointError(KnightctlError):
    """A checkpoint could not be written, or is missing, truncated, corrupted or unsafe to load."""

    exit_code = 1


class ResumeError(KnightctlError):
    """A run cannot be resumed as asked: the spec changed, the run is still alive or already done."""

    exit_code = 2


class GradcheckFailed(KnightctlError):
    """An op the model uses failed its gradient check, so `train` refuses to start."""

    exit_code = 1

    def __init__(self, message: str, *, reports: list | None = None, hint: str | None = None) -> None:  # type: ignore[type-arg]
        super().__init__(message, hint=hint)
        self.reports = reports or []


class Interrupted(KnightctlError):
    """The run was stopped by SIGINT (exit 130) or SIGTERM (exit 143)."""

    def __init__(
        self,
        message: str,
        *,
        signal_name: str = "SIGINT",
        run_id: str | None = None,
        hint: str | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.signal_name = signal_name
        self.run_id = run_id
        self.checkpoint = checkpoint  # written when the run stopped; None if it stopped at once
        self.exit_code = 143 if signal_name == "SIGTERM" else 130


class SweepError(KnightctlError):
    """A --grid or --random option that cannot be read, or a --metric the trials would not log."""

    exit_code = 2


class UsageError(KnightctlError):
    """An argument a command or API call does not take: an unknown component kind or shell, say."""

    exit_code = 2


class DistributedFailure(KnightctlError):
    """A rank of a distributed job failed, and no restarts were left."""

    exit_code = 1


class PeerLost(KnightctlError):
    """Another rank of the job stopped (crashed, or was killed): this one cannot go on without it."""

    exit_code = 1


class VmapFallbackWarning(UserWarning):
    """A torch.library op has no vmap batching rule, so torch.vmap ran it once per sample (see vmapfallback.py)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message ("" if it has none): what a table row or a tag can hold."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def one_line(exc: BaseException) -> str:
    """`TypeName: first line of the message`: an exception told in one line, type included."""
    return f"{type(exc).__name__}: {first_line(exc)}"


class Terminated(KeyboardInterrupt):
    """SIGTERM delivered as an exception, so that it unwinds a run exactly like Ctrl-C does."""
