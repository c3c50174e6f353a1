"""Data-parallel training under torchrun: which process this is, each rank's share of the epoch.

Every rank draws the same balanced epoch (same sampler, same seed) and takes a contiguous slice of
each global batch, so the global batch and the epoch are the single-process ones; each rank's loss
is weighted by its share of the batch, so DistributedDataParallel's gradient average is the
gradient of the single-process batch mean, also for a last batch that does not split evenly.
Without torchrun (WORLD_SIZE unset or 1) nothing here talks to other processes.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: the CLI asks `ranks()` before it needs torch
    import torch


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def ranks() -> Ranks:
    """This process's place, from the variables torchrun sets."""
    env = os.environ
    return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def setup(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU); the device this rank trains on."""
    import torch
    import torch.distributed as dist

    r = ranks()
    if r.world == 1:
        return r, device
    if device.type == "cuda":
        device = torch.device("cuda", r.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
    return r, device


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def batch_shares(order: Sequence[int], batch_size: int, r: Ranks) -> Iterator[tuple[list[int], float]]:
    """Each global batch of `order` (as one process would batch it): this rank's sample indices and
    its share of the batch. A rank left with no sample gets one with share 0 (it must still step)."""
    for start in range(0, len(order), batch_size):
        chunk = list(order[start:start + batch_size])
        lo, hi = len(chunk) * r.rank // r.world, len(chunk) * (r.rank + 1) // r.world
        yield (chunk[lo:hi], (hi - lo) / len(chunk)) if hi > lo else (chunk[:1], 0.0)


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over all ranks (the values themselves in one process)."""
    import torch.distributed as dist

    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share_weights(model: torch.nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers."""
    import torch.distributed as dist

    if dist.is_initialized():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
