"""torch.distributed in a few functions. Falls back to one process when RANK is unset.

A `DistInfo` is passed to whoever needs to know the rank; there is no module-level state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def current() -> DistInfo:
    """The running process group as a DistInfo (rank 0 of 1 when not distributed)."""
    if not is_initialized():
        return DistInfo()
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
    )


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment; one process when it does not."""
    if "RANK" not in os.environ:
        return DistInfo()
    _check_launch_env()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    if not is_initialized():
        # NCCL for GPUs; gloo works everywhere else.
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # Rank 0 scores (and, with --labels, probes) kept checkpoints while the others wait at
        # a barrier: allow that an hour rather than the default ten minutes.
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=60))
    return current()


_LAUNCH_FIX = (
    "launch with `torchrun --nproc-per-node N -m lejepa_cli pretrain ...`, or unset RANK and "
    "WORLD_SIZE for one process"
)


def _check_launch_env() -> None:
    """RANK is set: the rest of what torchrun sets must be there and be numbers."""
    from lejepa_cli.errors import UsageError

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        value = os.environ.get(name)
        if value is not None and not (value.isascii() and value.isdigit()):
            raise UsageError(
                f"environment variable {name}={value!r} is not a number; {_LAUNCH_FIX}"
            )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if int(os.environ["RANK"]) >= world:
            raise UsageError(
                f"RANK {os.environ['RANK']} is not below WORLD_SIZE {world}; {_LAUNCH_FIX}"
            )
        missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(n)]
        if missing:
            raise UsageError(
                f"RANK and WORLD_SIZE are set but {' and '.join(missing)} not; {_LAUNCH_FIX}"
            )


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


class _AllReduceSum(torch.autograd.Function):
    """Sum across ranks. The backward passes the (rank-identical) incoming gradient through.

    Every rank computes the same loss from the reduced value, so the gradient of that one global
    loss with respect to this rank's contribution is exactly the incoming gradient. Used with
    a summing gradient reduction (see `train.py`) this gives the exact global gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D401
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over ranks; the identity when not distributed."""
    if not is_initialized() or dist.get_world_size() == 1:
        return x
    return _AllReduceSum.apply(x)


def all_reduce_mean_detached(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a value for logging (no gradient)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return x.detach()
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / dist.get_world_size()
