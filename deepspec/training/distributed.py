"""Process launch and torch.distributed plumbing.

Launch: one worker per visible GPU (``--device cuda``) or ``--nproc`` CPU workers, spawned with
torch.multiprocessing. Several nodes: ``RANK`` / ``WORLD_SIZE`` in the environment are the *node*
rank and node count (with ``MASTER_ADDR`` / ``MASTER_PORT``), so a worker's global rank is
``node_rank * nproc + local_rank``. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
import socket
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class LaunchPlan:
    nproc: int
    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int
    device_type: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan_launch(*, device_type: str, nproc: int | None) -> LaunchPlan:
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but no GPU is visible; use --device cpu or check CUDA_VISIBLE_DEVICES")
        gpus = torch.cuda.device_count()
        nproc = nproc or gpus
        if nproc > gpus:
            raise SystemExit(f"--nproc {nproc} exceeds the {gpus} visible GPUs; lower --nproc or set "
                             "CUDA_VISIBLE_DEVICES")
    nproc = nproc or 1
    if nproc < 1:
        raise SystemExit(f"--nproc must be >= 1, got {nproc}")
    num_nodes = int(os.environ.get("WORLD_SIZE", "1"))
    node_rank = int(os.environ.get("RANK", "0"))
    if not 0 <= node_rank < num_nodes:
        raise SystemExit(f"RANK={node_rank} must be a node rank in [0, WORLD_SIZE={num_nodes})")
    if num_nodes > 1 and not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        raise SystemExit("multi-node training needs MASTER_ADDR and MASTER_PORT in the environment")
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = int(os.environ.get("MASTER_PORT") or _free_port())
    return LaunchPlan(nproc=nproc, node_rank=node_rank, num_nodes=num_nodes, master_addr=addr, master_port=port,
                      device_type=device_type)


def launch(fn: Callable[[DistInfo], object], plan: LaunchPlan):
    """Run ``fn(info)`` in every local worker; a single-worker job runs in this process (no process group)."""
    if plan.nproc == 1 and plan.num_nodes == 1:
        device = torch.device("cuda", 0) if plan.device_type == "cuda" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return fn(DistInfo(rank=0, local_rank=0, world_size=1, device=device))
    torch.multiprocessing.spawn(_worker, args=(plan, fn), nprocs=plan.nproc, join=True)
    return None


def _worker(local_rank: int, plan: LaunchPlan, fn: Callable[[DistInfo], object]) -> None:
    world = plan.num_nodes * plan.nproc
    rank = plan.node_rank * plan.nproc + local_rank
    # Libraries that read the env (and our own children) must see *global* values from here on.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank))
    if plan.device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // plan.nproc))  # workers share the cores
        backend = "gloo"
    dist.init_process_group(backend=backend, init_method=f"tcp://{plan.master_addr}:{plan.master_port}",
                            rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30))
    try:
        fn(DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device))
    finally:
        dist.destroy_process_group()


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
        out[k] = flat[i:i + n].view(sums[k].shape).cpu()
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
def resolve_sharding(strategy: str, device: torch.device, *, warn: bool) -> str:
    """FSDP needs GPUs; on CPU we fall back to DDP (same maths, every rank holds the full model)."""
    if strategy != "no_shard" and device.type != "cuda":
        if warn:
            warnings.warn(f"train.sharding_strategy={strategy} (FSDP) needs CUDA; falling back to DDP (no_shard) "
                          "on CPU", stacklevel=2)
        return "no_shard"
    return strategy


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
