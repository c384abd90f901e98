"""How many CPU threads torch trains with: `train.threads` (or `--threads`) as a number, or `auto`.

torch's intra-op threads split one operation across cores. On a small model each operation is
microseconds of work, and the threads spend more time waking and waiting for each other than
computing; on a machine whose cores are busy with anything else, a thread that waits for a
descheduled partner makes every step wait too (the wine model's loop took 10-13 s with two threads
on a busy 2-core machine, 0.5 s with one). `auto` therefore takes one thread unless a step holds
enough arithmetic for several to pay: rows per step times parameters (about the multiply-adds of a
forward pass) of at least `AUTO_MANY_THREADS_WORK`, chosen with benchmarks/threads.py (README,
Threads). Then it keeps torch's own count (its default: the cores, or OMP_NUM_THREADS, which a
sweep's workers and `--nproc-per-node` set to each process's share). On CUDA or MPS the model's
arithmetic runs on the device, and `auto` leaves torch's count as it is.

Inter-op threads are left alone: they run TorchScript forks, which training does not use, and
torch lets a process set their number only once, before any parallel work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from knightctl.errors import SpecError

# Rows per step x parameters at which auto goes from one thread to torch's count. On a 2-core machine
# shared with other work, one thread was faster for every model measured, up to 1.4e9 a step
# (the 784-512-512-10 MLP at batch 2048); two won only in quiet minutes, from about 2e8 (README, Threads).
AUTO_MANY_THREADS_WORK = 1_000_000_000


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count a run trains with, and why."""

    count: int
    reason: str


def check_threads(value: object) -> None:
    """Refuse a `threads` argument that is neither None (the spec's), "auto" nor a positive integer."""
    if value is None or value == "auto" or (type(value) is int and value > 0):
        return
    raise SpecError("train()", [f"threads: must be a positive integer or 'auto' (got {value!r})"])


def choose_threads(
    setting: int | str, *, device_type: str, rows_per_step: int, n_parameters: int, available: int
) -> ThreadChoice:
    """The count for `setting` (a number, or "auto" by the module's rule); `available` is torch's
    count before the run (torch.get_num_threads())."""
    if setting != "auto":
        return ThreadChoice(int(setting), "as set")
    if device_type != "cpu":
        return ThreadChoice(available, f"auto: torch's own count; the model runs on {device_type}")
    work = rows_per_step * n_parameters
    if work < AUTO_MANY_THREADS_WORK:
        return ThreadChoice(1, f"auto: {work:,} multiply-adds a step, under {AUTO_MANY_THREADS_WORK:,}")
    return ThreadChoice(available, f"auto: {work:,} multiply-adds a step; torch's own count")


def apply_threads(choice: ThreadChoice) -> None:
    """Set torch's intra-op thread count for the rest of the run (`kept_threads` restores it)."""
    import torch  # here, not above: a sweep's own process checks `threads` without torch

    if torch.get_num_threads() != choice.count:
        torch.set_num_threads(choice.count)


@contextmanager
def kept_threads() -> Iterator[None]:
    """Restore torch's thread count on the way out: `train()` in a notebook or a script leaves the
    caller's setting as it found it."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
