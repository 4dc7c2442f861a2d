"""bench/gpu_check.py's shared pieces: sizes, the synthetic target and cache, the trainer, compile caches."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
H200_BF16_DENSE_FLOPS = 989e12
SECTIONS = ("checks", "train", "decode", "cache")
CONFIGS = {
    "dspark": "config/dspark/dspark_qwen3_4b.py",
    "dflash": "config/dflash/dflash_qwen3_4b.py",
    "eagle3": "config/eagle3/eagle3_qwen3_4b.py",
}
EAGLE3_LAYER_IDS = [1, 17, 33]  # config/eagle3/eagle3_qwen3_4b.py: a subset of the cache's five layers


@dataclasses.dataclass(frozen=True)
class Sizes:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    target_layers: int
    layer_ids: tuple[int, ...]
    vocab: int
    seq_len: int
    anchors: int
    markov_rank: int
    train_samples: int
    train_steps: int
    context_len: int  # decoding: cached tokens per request
    requests: tuple[int, ...]
    tokens_per_request: tuple[int, ...]
    draft_batches: tuple[int, ...]
    repeats: int
    cache_gb: float


FULL = Sizes(  # Qwen3-4B
    hidden=2560,
    intermediate=9728,
    heads=32,
    kv_heads=8,
    head_dim=128,
    target_layers=36,
    layer_ids=(1, 9, 17, 25, 33),
    vocab=151936,
    seq_len=4096,
    anchors=512,
    markov_rank=256,
    train_samples=6,
    train_steps=4,
    context_len=1024,
    requests=(1, 2, 4, 8, 16, 32, 64),
    tokens_per_request=(1, 2, 4, 8),
    draft_batches=(1, 8, 32),
    repeats=5,
    cache_gb=2.0,
)
SMALL = Sizes(
    hidden=64,
    intermediate=128,
    heads=4,
    kv_heads=2,
    head_dim=16,
    target_layers=36,  # the layer ids stay the paper's; a pieces-only target has no layer weights
    layer_ids=(1, 9, 17, 25, 33),
    vocab=512,
    seq_len=256,
    anchors=16,
    markov_rank=16,
    train_samples=4,
    train_steps=2,
    context_len=32,
    requests=(1, 2, 4),
    tokens_per_request=(1, 2, 4, 8),
    draft_batches=(1, 8, 32),
    repeats=2,
    cache_gb=0.01,
)
# The correctness checks always use tiny shapes (their cost is compilation, not arithmetic).
CHECK = dataclasses.replace(SMALL, seq_len=96, anchors=8, train_samples=4)


class Skip(Exception):
    """A check that cannot run here; the message is the reason."""


def _load(name: str, rel: str):
    """A sibling script as a module (bench/ and scripts/eval/ are not packages)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def bench_target_cache():
    return _load("deepspec_bench_target_cache", "bench/bench_target_cache.py")


def profile_engine():
    return _load("deepspec_profile_engine", "scripts/eval/profile_engine.py")


# ---------------------------------------------------------------------------- shared helpers


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def fresh_compile_caches(device) -> None:
    """Drop dynamo's compiled code before a check or run on CUDA.

    Compiled flex attention is one function for dynamo: every model, dtype and grad mode the checks run adds its
    own graphs to it (Eagle3's TTT alone: a few, deepspec.models.blocks.flex_kernel), and across checks they
    would reach dynamo's per-function recompile limit, after which flex silently runs uncompiled.
    """
    import torch

    if torch.device(device).type == "cuda":
        torch._dynamo.reset()


def require_cuda(device) -> None:
    import torch

    if torch.device(device).type != "cuda":
        raise Skip("CUDA only (--device cuda on a GPU machine)")
    if not torch.cuda.is_available():
        raise Skip("no CUDA device visible")


def target_config(sizes: Sizes, **extra):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=sizes.vocab,
        hidden_size=sizes.hidden,
        intermediate_size=sizes.intermediate,
        num_hidden_layers=sizes.target_layers,
        num_attention_heads=sizes.heads,
        num_key_value_heads=sizes.kv_heads,
        head_dim=sizes.head_dim,
        max_position_embeddings=max(4096, sizes.seq_len + 64),
        tie_word_embeddings=True,  # as Qwen3-4B
        **extra,
    )


def pieces_target(folder: Path, sizes: Sizes) -> Path:
    """A target folder with the config and only the frozen pieces the draft reads (embedding = tied LM head).

    The trainer reads nothing else of a target, so a Qwen3-4B-shaped one costs one 0.8 GB tensor.
    """
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    target_config(sizes).save_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    embed = (torch.randn(sizes.vocab, sizes.hidden, generator=g) * 0.02).bfloat16()
    save_file({"model.embed_tokens.weight": embed}, str(folder / "model.safetensors"))
    return folder


def synthetic_cache(path: Path, *, target: Path, sizes: Sizes, samples: int) -> Path:
    """``samples`` samples of exactly ``seq_len`` tokens (constant FLOPs per step), the first 30% prompt."""
    import torch

    from deepspec.cache.writer import TargetCacheWriter, finalize_target_cache

    g = torch.Generator().manual_seed(0)
    T, width = sizes.seq_len, len(sizes.layer_ids) * sizes.hidden
    pool = [
        dict(
            hidden_states=torch.randn(T, width, generator=g).bfloat16(),
            last_hidden_state=torch.randn(T, sizes.hidden, generator=g).bfloat16(),
        )
        for _ in range(min(2, samples))
    ]
    mask = torch.zeros(T, dtype=torch.uint8)
    mask[int(0.3 * T) :] = 1
    with TargetCacheWriter(
        path, target_model=str(target), layer_ids=list(sizes.layer_ids), hidden_size=sizes.hidden
    ) as writer:
        for i in range(samples):
            writer.add(
                source_index=i,
                input_ids=torch.randint(4, sizes.vocab, (T,), generator=g, dtype=torch.int32),
                loss_mask=mask,
                **pool[i % len(pool)],
            )
    finalize_target_cache(path, expected_num_samples=samples)
    return path


def train_config(
    algo: str,
    *,
    sizes: Sizes,
    target: Path,
    out: Path,
    backend: str = "auto",
    compile: bool = False,
    sharding: str = "no_shard",
    num_workers: int = 0,
):
    """The paper recipe (config/*_qwen3_4b.py) for a pieces-only target of ``sizes``, one sample per step."""
    from deepspec.run_config import load_config

    opts = [
        f"model.target_model_name_or_path={target}",
        f"model.attention_backend={backend}",
        "train.local_batch_size=1",
        "train.global_batch_size=1",
        "train.max_train_steps=1000",
        "train.precision=bf16",
        f"train.torch_compile={compile}",
        f"train.sharding_strategy={sharding}",
        "logging.checkpointing_steps=0",
        f"logging.checkpoint_dir={out}",
        f"logging.tensorboard_dir={out}/tb",
        f"data.max_length={sizes.seq_len}",
        f"data.num_workers={num_workers}",
    ]
    if algo == "eagle3":
        opts += [f"model.target_layer_ids={EAGLE3_LAYER_IDS}"]
    else:
        opts += [f"model.target_layer_ids={list(sizes.layer_ids)}", f"model.num_anchors={sizes.anchors}"]
        if sizes.vocab < FULL.vocab:
            opts += [f"model.mask_token_id={sizes.vocab - 1}"]
        if algo == "dspark":
            opts += [f"model.markov_rank={sizes.markov_rank}"]
    return load_config(ROOT / CONFIGS[algo], opts=opts)


def make_trainer(cfg, *, cache: Path, device):
    import torch

    from deepspec.launch import DistInfo
    from deepspec.training.trainer import Trainer

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    info = DistInfo(rank=0, local_rank=device.index or 0, world_size=1, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library warnings: what matters is said in the JSON
        return Trainer(cfg=cfg, cache_dir=str(cache), info=info, progress=False)


def endless(loader):
    while True:
        yield from loader


def run_steps(trainer, batches, n: int) -> list[tuple[dict, float, float]]:
    """``n`` optimizer steps through the trainer's own step: (record, wall seconds, data wait seconds) each."""
    out = []
    for _ in range(n):
        sync(trainer.device)
        t0 = time.perf_counter()
        record, wait = trainer.train_step(batches)
        sync(trainer.device)
        out.append((record, time.perf_counter() - t0, wait))
        trainer.step += 1  # as Trainer.fit does: the next step draws its own anchors
    return out


@contextlib.contextmanager
def nccl_world_of_one(device):
    """A one-rank NCCL process group (FSDP needs one), met through deepspec.launch's file-store rendezvous."""
    import torch
    import torch.distributed as dist

    from deepspec.launch import plan_launch, plan_rendezvous

    store = tempfile.mkdtemp(prefix="gpu-check-rendezvous-")
    rdv = plan_rendezvous(plan_launch(device_type="cuda", nproc=1, multi_node=False), store_dir=store)
    for key, value in rdv.env.items():
        os.environ.setdefault(key, value)
    dist.init_process_group(
        backend="nccl", init_method=rdv.init_method, rank=0, world_size=1, device_id=torch.device(device)
    )
    try:
        yield
    finally:
        dist.destroy_process_group()
        shutil.rmtree(store, ignore_errors=True)


@contextlib.contextmanager
def uncompiled_flex():
    """deepspec.models.blocks' flex attention without torch.compile (CPU: no C++ build per shape)."""
    from deepspec.models import blocks

    saved, env = dict(blocks._FLEX), os.environ.get("DEEPSPEC_FLEX_EAGER")
    blocks._FLEX.clear()
    os.environ["DEEPSPEC_FLEX_EAGER"] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            yield
    finally:
        blocks._FLEX.clear()
        blocks._FLEX.update(saved)
        if env is None:
            os.environ.pop("DEEPSPEC_FLEX_EAGER", None)
        else:
            os.environ["DEEPSPEC_FLEX_EAGER"] = env


def rel_error(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
