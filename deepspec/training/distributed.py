"""torch.distributed plumbing for training: collectives (no-ops for one worker) and model wrapping.

Starting the workers is :mod:`deepspec.launch`, shared with the cache build and eval.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from deepspec.launch import DistInfo


# -- collectives (no-ops for a single worker) ----------------------------------------------------
def all_reduce_sums(sums: dict[str, torch.Tensor], info: DistInfo) -> dict[str, torch.Tensor]:
    """Sum every tensor across ranks (one flat all-reduce)."""
    keys = sorted(sums)
    flat = torch.cat([sums[k].detach().float().reshape(-1) for k in keys])
    if info.distributed:
        flat = flat.to(info.device)
        dist.all_reduce(flat)
    out, i = {}, 0
    for k in keys:
        n = sums[k].numel()
        out[k] = flat[i : i + n].view(sums[k].shape).cpu()
        i += n
    return out


def all_gather_object(obj, info: DistInfo) -> list:
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# -- model wrapping ------------------------------------------------------------------------------
def resolve_sharding(strategy: str, *, sharded_world: bool) -> str:
    """The strategy the draft trains with: ``strategy`` wherever there is a process group to shard over.

    FSDP2 (``full_shard`` / ``shard_grad_op``) runs on NCCL and on gloo (CPU) alike. A single worker started
    without a process group has nothing to split its weights over, so it trains the plain model (the same
    maths; no warning, nothing changes).
    """
    return strategy if sharded_world else "no_shard"


def has_process_group() -> bool:
    """True inside a process group (every multi-worker run, and a one-rank group a caller formed itself)."""
    return dist.is_available() and dist.is_initialized()


def wrap_model(model: torch.nn.Module, *, strategy: str, info: DistInfo) -> torch.nn.Module:
    """DDP for ``no_shard``; FSDP2 ``fully_shard`` per draft layer then the root for the FSDP strategies."""
    if not info.distributed and strategy == "no_shard":
        return model
    if strategy == "no_shard":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    reshard = strategy == "full_shard"  # shard_grad_op keeps params gathered between forward and backward
    for layer in model.layers:
        fully_shard(layer, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)
    return model
