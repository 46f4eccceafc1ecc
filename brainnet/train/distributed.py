"""Multi-process training through ``torchrun``: one process per GPU (or CPU process), DDP over them.

``torchrun --nproc-per-node N --no-python brainnet train ...`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` joins that group (``nccl`` on CUDA, ``gloo``
on CPU). Without those variables (or with ``WORLD_SIZE=1``) training runs in this one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from brainprep.errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the run.

    Attributes:
        rank, world_size, local_rank: from the torchrun environment (0, 1, 0 when single-process).
        device: the device this process trains on.
        owns_group: this call created the process group (and must destroy it).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; CUDA devices are indexed by the local rank."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was requested but torch sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(device)


def init_distributed(device: str) -> DistributedContext:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (or reuse one that exists)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 1 and not dist.is_initialized():
        return DistributedContext(0, 1, 0, resolve_device(device), owns_group=False)
    target = resolve_device(device, local_rank)
    owns = False
    if not dist.is_initialized():
        if target.type == "cuda":
            torch.cuda.set_device(target)
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo", init_method="env://")
        owns = True
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, target, owns)


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum of ``tensor`` over all ranks (a copy; unchanged when single-process)."""
    total = tensor.detach().clone()
    if context.enabled:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks of the process group, differentiable: its gradient is the sum
    of the ranks' gradients (``torch.distributed.nn.functional.all_reduce``). With the same loss of the
    summed tensor on every rank, DDP's average of the parameter gradients then equals the gradient of
    that loss as one process holding every rank's batch would compute it."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor, op=dist.ReduceOp.SUM)


def broadcast_buffers(model: torch.nn.Module, context: DistributedContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics): each rank's training forwards
    updated its own from its own batches (DDP broadcasts rank 0's only at the start of a training forward),
    so without this rank 1 would validate, and hand back, a model that is not the one rank 0 saves."""
    if not context.enabled:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def shutdown(context: DistributedContext) -> None:
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()
