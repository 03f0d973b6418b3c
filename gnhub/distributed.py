"""torchrun: joining the process group from its environment, and this process's rank. The one place
gnhub reads WORLD_SIZE and LOCAL_RANK; torch is imported only where a process group is joined."""
from __future__ import annotations

import os
import sys

__all__ = ["barrier", "join", "rank_world"]


def join(device: str | None) -> str:
    """The device of this process (default: cuda:LOCAL_RANK under torchrun where there is a GPU,
    else cpu); under torchrun (WORLD_SIZE > 1) the process group is joined first."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return device or "cpu"
    # torch only for several processes; the CLI imports this module without it
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", 0))
    device = device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the joined process group, else (0, 1)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Waits for every rank (nothing to wait for in a single process)."""
    if rank_world()[1] > 1:
        sys.modules["torch.distributed"].barrier()
