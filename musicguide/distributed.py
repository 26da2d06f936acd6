"""Running as one of several processes under torchrun (`torch.distributed`), or alone.

`musicguide batch` splits its jobs across ranks with these; `musicguide train` uses them for DDP.
Alone (no torchrun), rank 0 of a world of 1: nothing is initialised and `gather` is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from the variables torchrun sets."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def start(device_type: str) -> World:
    """Join the process group when launched by torchrun: NCCL between GPUs, gloo on CPUs."""
    import torch.distributed as dist

    here = world()
    if here.size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return here


def device_for(choice: str, here: World) -> str:
    """Under torchrun each rank takes its own GPU (cuda:LOCAL_RANK); otherwise the choice as given."""
    import torch

    if here.size > 1 and choice in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{here.local_rank}"
    return choice


def gather(item, here: World) -> list:
    """Every rank's `item`, in rank order, on every rank (a list of one when alone)."""
    if here.size == 1:
        return [item]
    import torch.distributed as dist

    items: list = [None] * here.size
    dist.all_gather_object(items, item)
    return items


def stop() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def average(values, here: World):
    """The mean over ranks of a tensor (on the process group's device: CPU for gloo, the rank's GPU
    for NCCL); the tensor itself when alone."""
    if here.size == 1:
        return values
    import torch.distributed as dist

    values = values.clone()
    dist.all_reduce(values)
    return values / here.size


def total(values, here: World):
    """The sum over ranks of a tensor; the tensor itself when alone."""
    if here.size == 1:
        return values
    import torch.distributed as dist

    values = values.clone()
    dist.all_reduce(values)
    return values
