"""Several training processes under `torchrun`: joining the process group, ranks, and the few collectives the loop uses.

Without torchrun (no WORLD_SIZE, or WORLD_SIZE 1) every function here works as for a single process of rank 0.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

Item = TypeVar("Item")


def launched_world_size() -> int:
    """The number of processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> bool:
    """Join torchrun's process group (NCCL with one GPU per process when CUDA is there, gloo on CPU).

    Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT as torchrun sets them. Returns True if a
    group was joined (then call `cleanup()` at the end), False for a single process.
    """
    if launched_world_size() <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return True


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files and shows progress."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard(items: Sequence[Item], rank: int, world: int) -> Sequence[Item]:
    """This rank's share of `items`: every `world`-th item from position `rank`; the shards are disjoint."""
    return items[rank::world]


def broadcast_parameters(parameters: Iterable[torch.Tensor]) -> None:
    """Copy rank 0's values into every rank's tensors, in place."""
    if dist.is_initialized():
        with torch.no_grad():
            for parameter in parameters:
                dist.broadcast(parameter, src=0)


def average_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Replace each gradient by its mean over the ranks; every rank ends with the same values."""
    if not dist.is_initialized():
        return
    parameters = list(parameters)
    for parameter in parameters:
        if parameter.grad is None:  # unused this step on this rank: contribute zeros so the collectives line up
            parameter.grad = torch.zeros_like(parameter)
    # one all-reduce per dtype and device over the flattened gradients: one round trip, not one per tensor
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for parameter in parameters:
        groups.setdefault((parameter.grad.dtype, parameter.grad.device), []).append(parameter.grad)
    for grads in groups.values():
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        dist.all_reduce(flat)  # gloo has no AVG, so sum then divide
        flat.div_(dist.get_world_size())
        for grad, averaged in zip(grads, flat.split([grad.numel() for grad in grads]), strict=True):
            grad.copy_(averaged.view_as(grad))


def mean_over_ranks(value: torch.Tensor) -> float:
    """The mean of a scalar over the ranks."""
    if not dist.is_initialized():
        return value.item()
    total = value.detach().clone().float()
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (pickled; for small things such as a path)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (pickled; for small things such as RNG states)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup() -> None:
    """Leave the process group, if one was joined. All ranks meet first: a rank tearing gloo's connections down while
    its peer is still in the previous collective can abort the peer ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
