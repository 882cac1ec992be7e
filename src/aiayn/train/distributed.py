"""Several processes (GPUs or CPU processes, one node or many) through torchrun and DDP.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; we join the process group (NCCL on GPUs,
gloo on CPUs). Without torchrun this is a world of one and every call is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(device_type: str) -> World:
    """Join the process group when started by torchrun; returns this process's place in it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return World(rank, local_rank, size)


def all_reduce_sum(values: list[float], world: World, device) -> list[float]:
    """Sum a few numbers over all ranks (one small collective)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """Every process's x concatenated along the first dimension (the same sizes on every rank), with
    gradients flowing back to each process's own part; and where this process's rows begin. Without
    a process group: (x, 0)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0), dist.get_rank() * x.size(0)
