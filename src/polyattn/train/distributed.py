"""Data parallelism with ``torch.distributed`` (DDP), launched by ``torchrun``.

``torchrun --nproc_per_node 2 -m polyattn.cli train …`` sets ``WORLD_SIZE``/``RANK``; we then
join a process group (gloo on CPU, NCCL on CUDA). Every rank builds the same global batch from
``(seed, step)`` and trains on its contiguous shard; DDP averages gradients, so with equal shards
the update equals one process on the whole global batch (up to float summation order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "shutdown_distributed"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def device(self, requested: str) -> torch.device:
        """The device of this process: ``cuda:<local_rank>`` for CUDA runs, else ``requested``."""
        if requested.startswith("cuda") and self.enabled:
            return torch.device("cuda", self.local_rank)
        return torch.device(requested)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: str) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)


def shutdown_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
