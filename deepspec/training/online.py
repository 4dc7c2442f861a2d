"""Online training data: the frozen target runs live and hands the draft exactly what the cache reader would.

Sample ``i`` here is sample ``i`` of a cache built from the same files: both come from
``tokenize_training_data`` (same tokenisation, truncation, ``min_loss_tokens`` filter, same order), so the
StepSampler, its epochs, rank shards and resume position are the offline ones. Both producers capture
through ``capture_states`` (same family adapter, same bf16 rounding) and end in the same ``collate``; the
loss code never knows which one fed it.

The target runs once per micro-batch, in the training process (:class:`OnlineCollate`). On the CPU in fp32
that equals a cache built with batch size 1 bit for bit when micro-batches hold one sample (the paper's
``train.local_batch_size=1``); with several samples per forward, GEMM blocking changes with the padded shape
and a few stored values differ by one bf16 step (the cache builder's own batching does the same).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Sequence

import torch
from torch.utils.data import Dataset

from deepspec.data.capture import capture_states
from deepspec.errors import DeepSpecError
from deepspec.training.data import collate


class OnlineError(DeepSpecError, ValueError):
    """Online training cannot start as configured; the message names the numbers and what to change."""


class TokenDataset(Dataset):
    """The tokenized samples; the target states are added per micro-batch by :class:`OnlineCollate`."""

    def __init__(self, samples: list, *, identity: dict | None = None):
        self.samples = samples
        self.identity = identity  # the data files and settings (cache.build.data_identity), kept with checkpoints

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        return {
            "input_ids": torch.tensor(s.input_ids, dtype=torch.int32).long(),
            "loss_mask": torch.tensor(s.loss_mask, dtype=torch.uint8).bool(),
        }


class OnlineCollate:
    """collate_fn: one target forward over the micro-batch, then the cache path's ``collate``."""

    def __init__(self, *, target, layer_ids: Sequence[int], device: torch.device):
        self.target, self.layer_ids, self.device = target, list(layer_ids), device
        self.forward_s = 0.0  # target time so far; the trainer logs it per window as target_forward_s

    def __call__(self, samples: list[dict]) -> dict:
        t0 = time.perf_counter()
        on_gpu = self.device.type == "cuda"  # there the states stay on the GPU: no host round trip
        captured = capture_states(
            self.target,
            [s["input_ids"].tolist() for s in samples],
            layer_ids=self.layer_ids,
            device=self.device,
            to_cpu=not on_gpu,
        )
        if on_gpu:
            torch.cuda.synchronize(self.device)  # so forward_s is the target's time, not its launch time
        self.forward_s += time.perf_counter() - t0
        return collate(
            [{**s, "hidden_states": h, "last_hidden_state": last} for s, (h, last) in zip(samples, captured)]
        )


# -- memory: fail before step 1 when the target does not fit ------------------------------------------
def format_gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def draft_state_bytes(draft: torch.nn.Module) -> int:
    """fp32 weights of the draft, plus gradient and two AdamW moments for each trainable weight."""
    total = 0
    for p in draft.parameters():
        total += p.numel() * 4 * (4 if p.requires_grad else 1)
    return total


def online_memory_plan(
    *,
    target_params: dict[str, int],
    target_dtype_bytes: int,
    world_size: int,
    sharded: bool,
    local_batch_size: int,
    max_length: int,
    hidden_size: int,
    num_captured: int,
    draft_bytes: int,
) -> dict[str, int]:
    """Bytes one rank needs for online training, by part (activations are the capture's, not the draft's)."""
    weights = target_params["total"] * target_dtype_bytes
    # Sharded, a rank holds its 1/world slice plus what one forward gathers at a time: the root unit (embedding,
    # norm, LM head) for the whole forward and one decoder layer.
    gathered = (target_params["outside_layers"] + target_params["largest_layer"]) * target_dtype_bytes
    target = -(-weights // world_size) + gathered if sharded else weights
    # The forward keeps the captured layers, the last state and ~4 hidden-sized working buffers per token.
    activations = local_batch_size * max_length * hidden_size * (num_captured + 5) * target_dtype_bytes
    return {"target weights": target, "target activations": activations, "draft + optimizer": draft_bytes}


def check_memory_fits(plan: dict[str, int], *, free_bytes: int, where: str, world_size: int, sharded: bool) -> None:
    need = sum(plan.values())
    if need <= free_bytes:
        return
    parts = ", ".join(f"{k} {format_gib(v)}" for k, v in plan.items())
    fixes = ["lower train.local_batch_size or data.max_length"]
    if not sharded and world_size > 1:
        fixes.insert(0, f"set train.target_sharding=True (the target's weights split over {world_size} ranks)")
    fixes.append("or train offline from a target cache (scripts/data/prepare_target_cache.py)")
    raise OnlineError(
        f"online training needs about {format_gib(need)} per rank on {where} ({parts}) but only "
        f"{format_gib(free_bytes)} is free; " + "; ".join(fixes)
    )


def free_memory_bytes(device: torch.device, *, ranks_on_node: int) -> tuple[int, str]:
    """(free bytes for one rank, what was measured): the GPU's free memory, or this rank's share of host RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"{device} ({torch.cuda.get_device_name(device)})"
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if ":" in line}
        return info["MemAvailable"] // max(1, ranks_on_node), f"host RAM shared by {ranks_on_node} rank(s)"
    except (OSError, KeyError, ValueError):
        return 1 << 62, "host RAM (unknown)"


# -- the producer -----------------------------------------------------------------------------------
def shard_target(target, *, device: torch.device, world_size: int) -> None:
    """FSDP2 over the frozen target: each rank keeps 1/world of every layer, gathered for its forward."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    for layer in target.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    # The root is the text decoder (capture calls it, not the LM wrapper); fully_shard moves shards to the device.
    fully_shard(target.decoder, mesh=mesh, reshard_after_forward=True)
    if target.lm_head.weight is not target.embed_tokens.weight:  # untied: capture never uses it, keep it split
        fully_shard(target.lm_head, mesh=mesh, reshard_after_forward=True)


def build_online_source(*, cfg, train_data_paths: Sequence[str], info, draft_bytes: int):
    """(TokenDataset, OnlineCollate): tokenized like the cache builder, target loaded frozen and checked to fit."""
    from transformers import AutoTokenizer

    from deepspec.cache.build import data_identity, report_plan, tokenize_training_data
    from deepspec.data.conversations import list_input_files
    from deepspec.precision import target_precision
    from deepspec.targets import family_of, load_target, load_target_config, validate_layer_ids
    from deepspec.target_files import count_target_parameters

    path = cfg.model.target_model_name_or_path
    device = info.device
    list_input_files(list(train_data_paths))  # a missing file fails now (train.py checked the outputs against them)
    hf_config = load_target_config(path)
    text = family_of(hf_config).text_config(hf_config)
    layer_ids = validate_layer_ids(cfg.model.target_layer_ids, num_layers=int(text.num_hidden_layers))
    sharded = bool(cfg.train.get("target_sharding", False)) and info.world_size > 1
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[target_precision(device)]

    plan = online_memory_plan(
        target_params=count_target_parameters(path),
        target_dtype_bytes=dtype.itemsize,
        world_size=info.world_size,
        sharded=sharded,
        local_batch_size=int(cfg.train.local_batch_size),
        max_length=int(cfg.data.max_length),
        hidden_size=int(text.hidden_size),
        num_captured=len(layer_ids),
        draft_bytes=draft_bytes,
    )
    ranks_on_node = int(os.environ.get("LOCAL_WORLD_SIZE") or info.world_size)  # set but empty: as unset
    free, where = free_memory_bytes(device, ranks_on_node=ranks_on_node)
    check_memory_fits(plan, free_bytes=free, where=where, world_size=info.world_size, sharded=sharded)

    tokenizer = AutoTokenizer.from_pretrained(path)
    settings = {
        "chat_template": cfg.data.chat_template,
        "max_length": int(cfg.data.max_length),
        "min_loss_tokens": int(cfg.data.min_loss_tokens),
    }
    tokens = tokenize_training_data(list(train_data_paths), tokenizer=tokenizer, **settings)
    # The cache builder's report: kept / skipped with reasons and file:line, and an empty or all-bad file refused.
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if info.is_main else (lambda msg: None)
    report_plan(tokens, max_length=settings["max_length"], min_loss_knob="data.min_loss_tokens", log=say)
    identity = data_identity(train_data_paths=list(train_data_paths), **settings)
    # deepspec.targets.Target holds its model in eval mode with requires_grad off; capture runs under no_grad.
    target = load_target(path, dtype=dtype, device="cpu" if sharded else device, with_tokenizer=False)
    if sharded:
        shard_target(target, device=device, world_size=info.world_size)
    return TokenDataset(tokens.samples, identity=identity), OnlineCollate(
        target=target, layer_ids=layer_ids, device=device
    )
