"""Data-parallel training across processes: the process group, each rank's shard, agreement between ranks.

A process started by `torchrun` (or by `knightctl train --nproc-per-node N`, which uses the same
engine) finds RANK, WORLD_SIZE and LOCAL_RANK in its environment; `join()` then joins the process
group (gloo for CPU tensors, nccl for CUDA ones) and returns a `Ranks`. Anywhere else it returns
`SINGLE`, whose every method is free and changes nothing, so the loop reads the same either way.

Every rank draws the same data order and takes its slice of each global batch. A slice's mean
loss is weighted by its share of the batch (`rows_here * world / rows_in_batch`), so that DDP's
average of the ranks' gradients is the gradient of the global batch's mean loss even when the
batch does not split evenly: the same step a single process takes, up to summation order.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from knightctl.errors import DeviceError, KnightctlError, PeerLost, first_line

# How long a rank waits in a collective for the others (seconds). Rank 0 alone runs the gradient
# check and opens the MLflow run before the first collective, which can take a minute on a slow
# store; a rank that died is noticed at once (its connection closes), not after this.
COLLECTIVE_TIMEOUT_S = 600
_STOP_CODES = {None: 0, "SIGINT": 1, "SIGTERM": 2}


class Single:
    """One process: every method is the identity, and costs nothing."""

    rank, world_size, local_rank, restart_count = 0, 1, 0, 0
    job_id: str | None = None
    is_main, distributed = True, False

    def shard(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        return inputs, targets, 1.0

    def reducer(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return None

    def agree_stop(self, requested: str | None) -> str | None:
        return requested

    def broadcast(self, value: Any) -> Any:
        return value

    def gather(self, value: Any) -> list[Any] | None:
        return None

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def device(self, device: torch.device) -> torch.device:
        return device

    def leave(self) -> None:
        pass


SINGLE = Single()


@dataclass
class Ranks(Single):
    """This process's place in a distributed job, and the collectives the loop needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    restart_count: int = 0  # how often torchrun has restarted the job's workers
    job_id: str | None = None  # torchrun's rendezvous id, the same across restarts
    distributed: bool = True

    @property
    def is_main(self) -> bool:  # type: ignore[override]
        return self.rank == 0

    def shard(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This rank's rows of a global batch, and its loss weight (see the module docstring)."""
        rows = int(inputs.shape[0])
        start, stop = rows * self.rank // self.world_size, rows * (self.rank + 1) // self.world_size
        return inputs[start:stop], targets[start:stop], (stop - start) * self.world_size / rows

    def reducer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The mean over ranks of a stacked tensor of metrics: one collective for all of them."""

        def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
            values = values.clone()
            _collective(torch.distributed.all_reduce, values)
            return values / self.world_size

        return mean_over_ranks

    def agree_stop(self, requested: str | None) -> str | None:
        """The stop every rank takes: if any rank was asked to stop, all stop, at the same step."""
        code = torch.tensor([_STOP_CODES.get(requested, 1)], dtype=torch.int64, device=self._tensor_device())
        _collective(torch.distributed.all_reduce, code, op=torch.distributed.ReduceOp.MAX)
        return {number: name for name, number in _STOP_CODES.items()}[int(code.item())]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank (any picklable object)."""
        holder = [value]
        _collective(torch.distributed.broadcast_object_list, holder, src=0)
        return holder[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's `value`, in rank order, on rank 0 (None on the others)."""
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        _collective(torch.distributed.gather_object, value, gathered, dst=0)
        return gathered

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model in DistributedDataParallel, which averages gradients during backward."""
        from torch.nn.parallel import DistributedDataParallel

        if not any(p.requires_grad for p in model.parameters()):
            raise KnightctlError("distributed training needs a model with trainable parameters")
        on_cuda = next(model.parameters()).device.type == "cuda"
        # Gradients as views into DDP's buckets: one copy fewer per step (about 4% of a step of the
        # 784-512-512-10 MLP on two CPU processes).
        return DistributedDataParallel(
            model, device_ids=[self.local_rank] if on_cuda else None, gradient_as_bucket_view=True
        )

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: CUDA device LOCAL_RANK on a machine with several; the CPU stays the CPU."""
        if device.type == "mps":
            raise DeviceError(
                "distributed training cannot use MPS: torch.distributed has no backend for it",
                hint="train on the CPU with --device cpu, or in one process",
            )
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise DeviceError(
                    f"rank {self.rank} has local rank {self.local_rank}, but this machine has "
                    f"{torch.cuda.device_count()} CUDA devices",
                    hint="start at most one process per GPU",
                )
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def leave(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def _tensor_device(self) -> torch.device:
        # nccl moves CUDA tensors only; gloo takes CPU ones.
        backend = torch.distributed.get_backend()
        return (
            torch.device("cuda", self.local_rank)
            if "nccl" in str(backend) and "gloo" not in str(backend)
            else torch.device("cpu")
        )


def join() -> Single:
    """Join the process group torchrun's environment describes; SINGLE when there is none."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return SINGLE
    ranks = Ranks(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        restart_count=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
        job_id=os.environ.get("TORCHELASTIC_RUN_ID"),
    )
    if not torch.distributed.is_available():
        raise KnightctlError("this torch build has no torch.distributed; distributed training needs it")
    if not torch.distributed.is_initialized():
        # No backend named: gloo for CPU tensors and, where CUDA is, nccl for CUDA tensors.
        timeout = timedelta(seconds=COLLECTIVE_TIMEOUT_S)
        torch.distributed.init_process_group(
            store=_attempt_store(ranks, timeout), rank=ranks.rank, world_size=ranks.world_size, timeout=timeout
        )
    return ranks


def _attempt_store(ranks: Ranks, timeout: timedelta) -> Any:
    """The key-value store the ranks meet in, scoped to this attempt of the job.

    Under torchrun the agent hosts the store and keeps it across restarts. Without a scope of
    our own, a restarted rank can read the address an earlier attempt's rank published and
    dial a dead process: seen here, with torch 2.13, as a hang or "connection refused" in
    restarted jobs, plain torchrun scripts included.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":  # ranks started some other way: rank 0 hosts it
        store = torch.distributed.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            ranks.world_size,
            is_master=ranks.is_main,
            timeout=timeout,
        )
        return store
    store = torch.distributed.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), ranks.world_size, is_master=False, timeout=timeout
    )
    return torch.distributed.PrefixStore(f"knightctl/attempt-{ranks.restart_count}", store)


@contextmanager
def joined() -> Iterator[Single]:
    """`join()` for the block's length: a rank that fails records why for torchrun, and every rank
    leaves the process group at the end, however the block ends."""
    ranks = join()
    try:
        yield ranks
    except BaseException as exc:
        if ranks.distributed:
            record_failure(exc)
        raise
    finally:
        ranks.leave()


def is_peer_lost(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says another rank went away, rather than what went wrong."""
    dist_error = getattr(torch.distributed, "DistError", ())  # torch 2.1 and later
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (PeerLost, dist_error)):
            return True
        if isinstance(seen, RuntimeError) and any(mark in str(seen) for mark in _PEER_LOST_MARKS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# What gloo and nccl say when a peer's connection closes or a collective gives up.
_PEER_LOST_MARKS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "NCCL communicator was aborted",
    "Timed out waiting",
    "remote worker crashing",
)


def record_failure(exc: BaseException) -> None:
    """Write why this rank failed where torchrun reads it (TORCHELASTIC_ERROR_FILE): its summary names the
    rank and shows this, and `knightctl train --nproc-per-node` tells a cause from its consequences."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return
    if isinstance(exc, KnightctlError):
        message, hint = exc.message, exc.hint
    else:
        message, hint = f"{type(exc).__name__}: {exc}", None
    record = {
        "message": {
            "message": str(exc) if isinstance(exc, KnightctlError) else message,
            "extraInfo": {"py_callstack": "".join(traceback.format_exception(exc)), "timestamp": str(int(time.time()))},
        },
        "knightctl": {
            "message": message,
            "hint": hint,
            "peer_lost": is_peer_lost(exc),
            "time": time.time(),
            "rank": os.environ.get("RANK"),
        },
    }
    try:
        with open(path, "w") as handle:
            json.dump(record, handle)
    except OSError:  # the error being raised matters more than this record of it
        pass


def _collective(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a torch.distributed collective; a rank that went away becomes PeerLost."""
    try:
        return function(*args, **kwargs)
    except RuntimeError as exc:
        if is_peer_lost(exc):
            raise PeerLost(
                f"another rank of this job stopped: {(first_line(exc) or type(exc).__name__)}",
                hint="the first rank that failed says why; this one only lost its connection to it",
            ) from exc
        raise
