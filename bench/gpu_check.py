#!/usr/bin/env python
"""One-command device check: correctness, training throughput, decoding costs and cache I/O, as one JSON.

    bash bench/gpu_check.sh                           # GPU node: Qwen3-4B shapes, sized for < 5 min on one H200
    bash bench/gpu_check.sh --device cpu --small      # everywhere (CI): tiny shapes, CUDA-only checks skipped

Writes ``gpu_check.json`` (every section, every check with a status), ``cost_table.json`` (the target's
verification cost table, the format ``scripts/eval/simulate_serving.py --cost-table`` reads) and
``gpu_check.log`` into ``--out`` (default ``$OUT``, else ``./gpu_check_out``). Exit status 1 when a check
failed or a section stopped on an error.

Sections (``--sections``):

checks   correctness, the same functions as tests/test_gpu_check.py (pytest -m gpu): the DSpark block-sparse
         flex attention forward / backward against the eager path (fp32 and bf16 autocast); Eagle3's TTT
         on the device against the CPU; one training step of each algorithm with the trainer (bf16 autocast);
         the same under FSDP (NCCL, world size 1) with train.torch_compile=True and no recompilation after
         step 2 (CUDA only); greedy speculative decoding equal to ``generate`` for a tiny random target.
         A check is "pass", "fail: why" or "skipped: why".
train    the trainer's step time, tokens/s, MFU, peak memory and data-wait share for a 5-layer DSpark and
         a 1-layer Eagle3 (TTT 7) over a synthetic target cache of Qwen3-4B shape; eager, and compiled on
         CUDA. FLOPs per step are counted by torch.utils.flop_counter.FlopCounterMode over one step with
         dense-mask attention (the formula is written into the JSON).
decode   target verification time for requests x tokens per request (profile_engine.measure), the
         cost table, and the DSpark draft's round time at batch 1 / 8 / 32 with the Markov loop's share.
cache    TargetCacheWriter fed from device tensors (and from host tensors) vs a raw sequential write of
         the same bytes to the same disk (bench/bench_target_cache.py's helpers).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace

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


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def fresh_compile_caches(device) -> None:
    """Drop dynamo's compiled code before a check or run on CUDA.

    Compiled flex attention (``dynamic=False``) compiles once per shape, and Eagle3's TTT has one key length
    per step (7 shapes per forward, as many for the backward): across checks that would reach dynamo's
    per-function recompile limit, after which flex silently runs uncompiled.
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
        warnings.simplefilter("ignore")  # torch_compile on CPU etc.: said in the JSON instead
        return Trainer(cfg=cfg, cache_dir=str(cache), info=info, progress=False)


def endless(loader):
    while True:
        yield from loader


def run_steps(trainer, batches, n: int) -> list[tuple[dict, float, float]]:
    """``n`` optimizer steps through the trainer's own step: (record, wall seconds, data wait seconds) each."""
    out = []
    for _ in range(n):
        _sync(trainer.device)
        t0 = time.perf_counter()
        record, wait = trainer.train_step(batches)
        _sync(trainer.device)
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


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---------------------------------------------------------------------------- 1. correctness checks


def _probe_draft(algo: str, device, *, sizes: Sizes = CHECK):
    import torch

    from deepspec.models import build_draft, draft_config_from_target
    from deepspec.recipes import model_recipe

    layer_ids = EAGLE3_LAYER_IDS if algo == "eagle3" else list(sizes.layer_ids)
    model_cfg = model_recipe(algo, target="gpu-check", target_layer_ids=layer_ids, mask_token_id=sizes.vocab - 1)
    model_cfg.update(num_anchors=sizes.anchors, markov_rank=min(model_cfg.get("markov_rank", 0), sizes.markov_rank))
    if algo != "eagle3":
        model_cfg["num_draft_layers"] = 2
    torch.manual_seed(0)
    draft = build_draft(draft_config_from_target(target_config(sizes), model_cfg)).to(device)
    g = torch.Generator().manual_seed(1)
    B, T = 2, sizes.seq_len
    loss_mask = torch.zeros(B, T, dtype=torch.bool)
    loss_mask[:, T // 4 :] = True
    batch = dict(
        input_ids=torch.randint(4, sizes.vocab, (B, T), generator=g),
        hidden_states=torch.randn(B, T, len(layer_ids) * sizes.hidden, generator=g),
        loss_mask=loss_mask,
    )
    if algo != "eagle3":
        from deepspec.models.dspark import sample_anchors

        batch["anchors"], batch["anchor_valid"] = sample_anchors(
            loss_mask, num_anchors=sizes.anchors, block_size=int(draft.config.block_size), generator=g
        )
    return draft, {k: v.to(device) for k, v in batch.items()}


def _forward_backward(draft, batch, *, backend: str, bf16: bool, backward: bool):
    """Logits (float32) and, with ``backward``, the trainable parameters' gradients of a fixed projection."""
    import torch

    device = batch["input_ids"].device
    draft.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(backward):
        logits = draft(**batch, attention_backend=backend).logits.float()
    grads = None
    if backward:
        weight = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2)).to(device)
        (logits * weight).sum().backward()
        grads = torch.cat([p.grad.reshape(-1).float() for p in draft.trainable_parameters() if p.grad is not None])
        draft.zero_grad(set_to_none=True)
    return logits.detach(), grads


# Relative L2 error of logits / gradients against the fp32 eager path. bf16 autocast sdpa sits at 4e-3 .. 8e-3
# on CPU for these shapes; fp32 leaves room for other summation orders (flex / fused kernels, no TF32).
TOLERANCE = {"fp32": 1e-3, "bf16": 3e-2}


def check_dspark_flex(device, *, backward: bool) -> dict:
    """DSpark's block-sparse flex attention (training_mask) against the eager dense-mask path, fp32 and bf16.

    On CUDA flex is compiled (as in training); on CPU it runs uncompiled, forward only where torch has no
    CPU backward for it (then this raises :class:`Skip` with torch's reason).
    """
    import torch

    device = torch.device(device)
    fresh_compile_caches(device)
    draft, batch = _probe_draft("dspark", device)
    ref_logits, ref_grads = _forward_backward(draft, batch, backend="eager", bf16=False, backward=backward)
    ctx = uncompiled_flex() if device.type != "cuda" else contextlib.nullcontext()
    errors, failures = {}, []
    with ctx:
        for precision in ("fp32", "bf16"):
            for backend in ("sdpa", "flex"):
                try:
                    logits, grads = _forward_backward(
                        draft, batch, backend=backend, bf16=precision == "bf16", backward=backward
                    )
                except Exception as exc:  # noqa: BLE001 - a backend this torch lacks here is a skip, said why
                    if backend == "flex" and device.type != "cuda":
                        raise Skip(f"flex attention on CPU ({precision}): {type(exc).__name__}: {exc}"[:300]) from None
                    raise
                err = {"logits_rel_err": _rel(logits, ref_logits)}
                if backward:
                    err["grad_rel_err"] = _rel(grads, ref_grads)
                errors[f"{backend}_{precision}"] = err
                if backend == "flex" and max(err.values()) > TOLERANCE[precision]:
                    failures.append(f"flex {precision}: {err} > {TOLERANCE[precision]}")
    assert not failures, "; ".join(failures)
    return {"reference": "eager fp32", "tolerance_rel_l2": TOLERANCE, "errors": errors}


def check_eagle3_device_vs_cpu(device) -> dict:
    """Eagle3's TTT unroll (7 steps, attention_backend=auto: flex on CUDA) on the device equals the CPU run."""
    import torch

    require_cuda(device)
    draft, batch = _probe_draft("eagle3", "cpu")
    ref_logits, ref_grads = _forward_backward(draft, batch, backend="auto", bf16=False, backward=True)
    draft.to(device)
    batch = {k: v.to(device) for k, v in batch.items()}
    errors, failures = {}, []
    for precision in ("fp32", "bf16"):
        fresh_compile_caches(device)
        logits, grads = _forward_backward(draft, batch, backend="auto", bf16=precision == "bf16", backward=True)
        err = {"logits_rel_err": _rel(logits.cpu(), ref_logits), "grad_rel_err": _rel(grads.cpu(), ref_grads)}
        errors[precision] = err
        tol = TOLERANCE[precision]
        if max(err.values()) > tol:
            failures.append(f"{precision}: {err} > {tol}")
    assert not failures, "; ".join(failures)
    torch.cuda.empty_cache()
    return {"reference": "CPU fp32 (sdpa)", "ttt_length": int(draft.config.ttt_length), "errors": errors}


def check_train_step(algo: str, device, *, workdir: Path, fsdp_compile: bool = False, steps: int = 3) -> dict:
    """Steps of ``algo`` through the trainer under bf16 autocast: finite losses.

    ``fsdp_compile`` (CUDA): train.sharding_strategy=full_shard on a one-rank NCCL group and
    train.torch_compile=True; no new compiled graph after step 2.
    """
    import torch

    if fsdp_compile:
        require_cuda(device)
    work = Path(tempfile.mkdtemp(prefix=f"train_{algo}_", dir=workdir))
    target = pieces_target(work / "target", CHECK)
    cache = synthetic_cache(work / "cache", target=target, sizes=CHECK, samples=CHECK.train_samples)
    cfg = train_config(
        algo,
        sizes=CHECK,
        target=target,
        out=work / "run",
        compile=fsdp_compile,
        sharding="full_shard" if fsdp_compile else "no_shard",
    )
    group = nccl_world_of_one(device) if fsdp_compile else contextlib.nullcontext()
    with group:
        fresh_compile_caches(device)
        trainer = make_trainer(cfg, cache=cache, device=device)
        batches = endless(trainer.loader)
        counters = torch._dynamo.utils.counters
        records, graphs = [], []
        for _ in range(steps):
            records += run_steps(trainer, batches, 1)
            # graphs compiled so far and frames dynamo converted: both stop growing once nothing recompiles
            graphs.append((int(counters["stats"]["unique_graphs"]), int(counters["frames"]["ok"])))
        del trainer, batches
    losses = [float(r["loss"]) for r, _, _ in records]
    assert all(math.isfinite(x) for x in losses), f"{algo}: non-finite loss {losses}"
    result = {
        "losses": losses,
        "precision": records[0][0].get("precision", "bf16"),
        "sharding": cfg.train.sharding_strategy,
        "torch_compile": bool(cfg.train.torch_compile),
    }
    if fsdp_compile:
        result["dynamo_graphs_and_frames_after_each_step"] = graphs
        assert max(graphs[0]) > 0, f"{algo}: torch.compile compiled nothing (dynamo counters {graphs})"
        assert graphs[-1] == graphs[1], f"{algo}: recompiled after step 2 (dynamo graphs, frames per step {graphs})"
        torch._dynamo.reset()
    shutil.rmtree(work, ignore_errors=True)
    return result


def tiny_target(device, *, vocab: int = 64):
    """A tiny random Qwen3 target (eager attention, fp32, sharpened LM head so drafts and target differ)."""
    import torch
    from transformers import Qwen3ForCausalLM

    from deepspec.targets import Target

    torch.manual_seed(0)
    sizes = dataclasses.replace(SMALL, vocab=vocab, hidden=32, intermediate=64, heads=2, kv_heads=1, target_layers=3)
    cfg = target_config(sizes, pad_token_id=0, eos_token_id=1)
    cfg.tie_word_embeddings = False
    cfg._attn_implementation = "eager"
    model = Qwen3ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return Target(model.to(device))


def check_greedy_decoding(device) -> dict:
    """Greedy speculative decoding (every algorithm, batch 1 and 3) equals the target's ``generate``."""
    import torch

    from deepspec.decoding.engine import speculative_generate
    from deepspec.decoding.proposers import build_proposer
    from deepspec.decoding.target_runner import TargetRunner
    from deepspec.models import build_draft, draft_config_from_target

    target = tiny_target(device)
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [3] * 11]
    n = 24
    reference = []
    for p in prompts:
        out = target.model.generate(
            torch.tensor([p], device=target.device),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        reference.append(out[0, len(p) :].tolist())
    accepted = {}
    for algo in ("dspark", "dflash", "eagle3"):
        torch.manual_seed(1)
        model_cfg = dict(
            algorithm=algo,
            num_draft_layers=1 if algo == "eagle3" else 2,
            target_layer_ids=[0, 1],
            block_size=4,
            ttt_length=4,
            mask_token_id=target.vocab_size - 1,
            **(
                dict(markov_rank=8, confidence_head_alpha=1.0, confidence_head_with_markov=True)
                if algo == "dspark"
                else {}
            ),
        )
        draft = build_draft(draft_config_from_target(target.model.config, model_cfg)).to(target.device).eval()
        draft.load_target_weights(target)
        runner = TargetRunner(target, layer_ids=draft.config.target_layer_ids)
        for batch in (1, 3):
            out = []
            for i in range(0, len(prompts), batch):
                out += speculative_generate(
                    runner=runner,
                    proposer=build_proposer(draft),
                    prompts=prompts[i : i + batch],
                    max_new_tokens=n,
                    temperature=0,
                )
            got = [g.tokens for g in out]
            assert got == reference, f"{algo} batch {batch}: {got} != generate's {reference}"
            rounds = [r for g in out for r in g.rounds]
            accepted[f"{algo}_batch{batch}"] = sum(r["accepted"] for r in rounds) / max(1, len(rounds))
    return {"prompts": len(prompts), "max_new_tokens": n, "mean_accepted_per_round": accepted}


def correctness_checks(device, *, workdir: Path) -> dict[str, tuple]:
    """name -> (function, kwargs); the pytest file calls the same functions."""
    checks = {
        "dspark_flex_forward": (check_dspark_flex, dict(device=device, backward=False)),
        "dspark_flex_backward": (check_dspark_flex, dict(device=device, backward=True)),
        "eagle3_ttt_device_equals_cpu": (check_eagle3_device_vs_cpu, dict(device=device)),
    }
    for algo in CONFIGS:
        checks[f"train_step_{algo}"] = (check_train_step, dict(algo=algo, device=device, workdir=workdir))
    for algo in CONFIGS:
        checks[f"train_step_{algo}_fsdp_compile"] = (
            check_train_step,
            dict(algo=algo, device=device, workdir=workdir, fsdp_compile=True, steps=4),
        )
    checks["greedy_decoding_equals_generate"] = (check_greedy_decoding, dict(device=device))
    return checks


def run_check(fn, kwargs, log) -> dict:
    t0 = time.perf_counter()
    try:
        details = fn(**kwargs)
        status = "pass"
    except Skip as exc:
        details, status = None, f"skipped: {exc}"
    except Exception as exc:  # noqa: BLE001 - a failed check is recorded, the run goes on
        details, status = {"traceback": traceback.format_exc()[-3000:]}, f"fail: {type(exc).__name__}: {exc}"[:600]
    out = {"status": status, "seconds": time.perf_counter() - t0}
    if details is not None:
        out["details"] = details
    log(f"  {status[:160]}  ({out['seconds']:.1f} s)")
    return out


# ---------------------------------------------------------------------------- 2. training throughput

FLOP_FORMULA = (
    "flops_per_step = FLOPs that torch.utils.flop_counter.FlopCounterMode counts for one optimizer step "
    "(forward + backward of the draft, frozen LM head and target logits included; elementwise ops count 0) "
    "run uncompiled with a dense-mask attention backend (sdpa on CUDA, eager on CPU) on the same batch shape. "
    "flops_upper = all counted FLOPs (attention counted dense: block-sparse / causal masks over-counted); "
    "flops_lower = aten.mm + aten.addmm only, i.e. the linear layers (projections, MLPs, fc, Markov head, "
    "LM head) without attention; "
    "mfu = flops / step_seconds / peak_flops, peak_flops = 989e12 (H200 bf16 dense) on CUDA, null on CPU"
)


def count_step_flops(algo: str, *, sizes: Sizes, target: Path, cache: Path, device, workdir: Path) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # Attention with a dense mask: sdpa on CUDA (its kernels have FLOP formulas), eager on CPU (CPU's fused
    # sdpa kernel has none; the eager path's matmuls count). Linear layers are aten.mm / aten.addmm either way.
    backend = "sdpa" if torch.device(device).type == "cuda" else "eager"
    cfg = train_config(algo, sizes=sizes, target=target, out=workdir / f"flops_{algo}", backend=backend)
    trainer = make_trainer(cfg, cache=cache, device=device)
    batches = endless(trainer.loader)
    with FlopCounterMode(display=False) as counter:
        run_steps(trainer, batches, 1)
    total = int(counter.get_total_flops())
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    linear = sum(n for op, n in by_op.items() if op in ("aten.mm", "aten.addmm"))
    del trainer, batches
    return {"flops_upper": total, "flops_lower": linear, "attention_backend_counted": backend, "by_op": by_op}


def train_throughput(
    algo: str, *, sizes: Sizes, target: Path, cache: Path, device, workdir: Path, compile: bool, flops: dict
) -> dict:
    import torch

    cuda = torch.device(device).type == "cuda"
    fresh_compile_caches(device)
    cfg = train_config(
        algo,
        sizes=sizes,
        target=target,
        out=workdir / f"run_{algo}_{compile}",
        compile=compile,
        num_workers=2 if cuda else 0,
    )
    trainer = make_trainer(cfg, cache=cache, device=device)
    batches = endless(trainer.loader)
    warmup = 2 if compile else 1  # compiled: step 1 compiles, step 2 may recompile (automatic dynamic shapes)
    run_steps(trainer, batches, warmup)
    if cuda:
        torch.cuda.reset_peak_memory_stats(trainer.device)
    timed = run_steps(trainer, batches, sizes.train_steps)
    step_s = statistics.median(w for _, w, _ in timed)
    tokens = statistics.median(float(r["num_tokens"]) for r, _, _ in timed)
    peak = H200_BF16_DENSE_FLOPS if cuda else None
    out = {
        "attention_backend": "flex" if cuda else "sdpa",  # model.attention_backend=auto
        "note": "eager = train.torch_compile=False; flex attention itself is compiled on CUDA, as in training",
        "torch_compile": compile,
        "warmup_steps": warmup,
        "timed_steps": len(timed),
        "step_seconds": step_s,
        "step_seconds_all": [w for _, w, _ in timed],
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / step_s,
        "data_wait_fraction": sum(d for _, _, d in timed) / sum(w for _, w, _ in timed),
        "loss_last": float(timed[-1][0]["loss"]),
    }
    for bound in ("upper", "lower"):
        n = flops.get(f"flops_{bound}")
        out[f"achieved_flops_per_s_{bound}"] = n / step_s if n is not None else None
        out[f"mfu_{bound}"] = n / step_s / peak if n is not None and peak else None
    if cuda:
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(trainer.device))
        out["peak_memory_kind"] = "torch.cuda.max_memory_allocated over the timed steps"
    else:
        out["peak_memory_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        out["peak_memory_kind"] = "process peak RSS so far (getrusage; includes everything run before)"
    del trainer, batches
    if cuda:
        torch.cuda.empty_cache()
    return out


def train_section(device, *, sizes: Sizes, workdir: Path, log) -> dict:
    import torch

    cuda = torch.device(device).type == "cuda"
    work = Path(tempfile.mkdtemp(prefix="throughput_", dir=workdir))
    t0 = time.perf_counter()
    target = pieces_target(work / "target", sizes)
    cache = synthetic_cache(work / "cache", target=target, sizes=sizes, samples=sizes.train_samples)
    out = {
        "shapes": {
            "target": "Qwen3-4B" if sizes == FULL else "small",
            "hidden": sizes.hidden,
            "target_layers": sizes.target_layers,
            "layer_ids": list(sizes.layer_ids),
            "vocab": sizes.vocab,
            "tokens_per_sample": sizes.seq_len,
            "samples_per_step": 1,
            "dspark": {"draft_layers": 5, "anchors": sizes.anchors, "block_size": 7, "markov_rank": sizes.markov_rank},
            "eagle3": {"draft_layers": 1, "ttt_length": 7, "layer_ids": EAGLE3_LAYER_IDS},
        },
        "flop_formula": FLOP_FORMULA,
        "peak_flops": H200_BF16_DENSE_FLOPS if cuda else None,
        "setup_seconds": time.perf_counter() - t0,
    }
    for algo in ("dspark", "eagle3"):
        try:
            flops = count_step_flops(algo, sizes=sizes, target=target, cache=cache, device=device, workdir=work)
        except Exception as exc:  # noqa: BLE001 - the throughput is still worth having without the FLOP count
            failed = f"error: {type(exc).__name__}: {exc}"[:600]
            flops = {"status": failed, "traceback": traceback.format_exc()}
            log(f"  {algo} FLOP count: {failed}")
        if cuda:
            torch.cuda.empty_cache()
        row = {"flops_per_step": flops}
        for mode in ("eager", "compiled"):
            if mode == "compiled" and not cuda:
                row[mode] = {"status": "skipped: torch_compile is CUDA-only in the trainer"}
                continue
            try:
                row[mode] = train_throughput(
                    algo,
                    sizes=sizes,
                    target=target,
                    cache=cache,
                    device=device,
                    workdir=work,
                    compile=mode == "compiled",
                    flops=flops,
                )
                row[mode]["status"] = "ok"
                r = row[mode]
                log(
                    f"  {algo} {mode}: {r['step_seconds'] * 1e3:.1f} ms/step, {r['tokens_per_s']:.0f} tokens/s, "
                    f"data wait {r['data_wait_fraction']:.1%}, MFU {r['mfu_lower']} .. {r['mfu_upper']}"
                )
            except Exception as exc:  # noqa: BLE001
                row[mode] = {"status": f"error: {type(exc).__name__}: {exc}"[:600], "traceback": traceback.format_exc()}
                log(f"  {algo} {mode}: {row[mode]['status']}")
        out[algo] = row
    shutil.rmtree(work, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------- 3. decoding costs


def random_target(sizes: Sizes, device, dtype):
    """A random target of ``sizes`` built on the device (no folder): what profile_engine.measure times."""
    import torch
    from transformers import Qwen3ForCausalLM

    cfg = target_config(sizes)
    cfg._attn_implementation = "sdpa" if torch.device(device).type == "cuda" else "eager"
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = Qwen3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def draft_round_times(target_cfg, *, sizes: Sizes, device, dtype, table, repeats: int) -> dict:
    """The DSpark draft's round (ParallelProposer.propose) at each batch, and the Markov loop's share.

    Markov loop = the proposer's left-to-right sampling (``_sample_block``) minus the same sampling with
    the Markov and confidence heads removed (all slots drawn at once, as DFlash); its share is given of the
    draft round and of the whole round (draft + target verification of batch x (γ+1) tokens from ``table``).
    """
    import torch

    from deepspec.decoding.proposers import ParallelProposer
    from deepspec.decoding.slots import SlotTable
    from deepspec.models import build_draft, draft_config_from_target
    from deepspec.recipes import model_recipe

    model_cfg = model_recipe("dspark", target="gpu-check", target_layer_ids=list(sizes.layer_ids), mask_token_id=None)
    model_cfg.update(markov_rank=sizes.markov_rank)
    if sizes.vocab < FULL.vocab:
        model_cfg["mask_token_id"] = sizes.vocab - 1
    torch.manual_seed(0)
    draft = build_draft(draft_config_from_target(target_cfg, model_cfg)).to(device=device, dtype=dtype).eval()
    proposer = ParallelProposer(draft)
    G, C, H = proposer.gamma, sizes.context_len, sizes.hidden
    width = len(sizes.layer_ids) * H

    def timed(fn) -> float:
        times = []
        for i in range(repeats + 2):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i >= 2:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    rows = []
    with torch.inference_mode():
        for b in sizes.draft_batches:
            slots = SlotTable(batch=b, device=torch.device(device))
            pos = torch.arange(C, device=device).expand(b, C)
            valid = torch.ones(b, C, dtype=torch.bool, device=device)
            proposer.reset(batch=b)
            proposer.extend(
                slots=slots,
                hidden_states=torch.randn(b, C, width, device=device, dtype=dtype),
                positions=pos,
                valid=valid,
                next_tokens=torch.randint(4, sizes.vocab, (b, C), device=device),
            )
            slots.append(valid=valid, pos=pos)
            pending = torch.randint(4, sizes.vocab, (b,), device=device)
            round_s = timed(lambda: proposer.propose(slots=slots, pending=pending, temperature=0.0))
            h = torch.randn(b, G, H, device=device, dtype=dtype)
            with_heads = timed(lambda: proposer._sample_block(h, pending, 0.0, None))
            heads = (draft.markov_head, draft.confidence_head)
            draft.markov_head = draft.confidence_head = None
            try:
                without = timed(lambda: proposer._sample_block(h, pending, 0.0, None))
            finally:
                draft.markov_head, draft.confidence_head = heads
            markov = max(0.0, with_heads - without)
            verify = float(table.step_time(b * (G + 1)))
            rows.append(
                {
                    "batch": b,
                    "draft_round_seconds": round_s,
                    "markov_loop_seconds": markov,
                    "markov_share_of_draft_round": markov / round_s,
                    "verify_seconds": verify,
                    "markov_share_of_round": markov / (round_s + verify),
                }
            )
    return {
        "gamma": G,
        "context_len": C,
        "draft_layers": len(draft.layers),
        "markov_rank": sizes.markov_rank,
        "paper_claim_markov_share_of_round": [0.002, 0.013],
        "rounds": rows,
    }


def decode_section(device, *, sizes: Sizes, out_dir: Path, log) -> dict:
    import torch

    from deepspec.decoding.scheduler import CostTable

    pe = profile_engine()
    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model = random_target(sizes, device, dtype)
    kw = dict(context_len=sizes.context_len, repeats=sizes.repeats, warmup=2, seed=0, progress=False)
    grid = []
    for t in sizes.tokens_per_request:
        for p in pe.measure(model, batch_tokens=[r * t for r in sizes.requests], row_tokens=t, **kw):
            grid.append({"requests": p["rows"], "tokens_per_request": t, "verify_seconds": p["step_seconds"]})
    log(f"  verify grid: {len(grid)} points")
    most = max(sizes.requests) * max(sizes.tokens_per_request)
    batch_tokens = sorted({b for b in pe.DEFAULT_BATCH_TOKENS if b <= most} | {r * 8 for r in sizes.requests})
    points = pe.measure(model, batch_tokens=batch_tokens, row_tokens=8, **kw)
    device_name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    table = CostTable(
        batch_tokens=[p["batch_tokens"] for p in points],
        steps_per_second=[p["steps_per_second"] for p in points],
        device=device_name,
        context_len=sizes.context_len,
        dtype=str(dtype).removeprefix("torch."),
        target="random Qwen3-4B shape" if sizes == FULL else "random small Qwen3",
        extra={
            "row_tokens": 8,
            "repeats": sizes.repeats,
            "warmup": 2,
            "computed_tokens": [p["computed_tokens"] for p in points],
            "step_seconds": [p["step_seconds"] for p in points],
        },
    )
    path = out_dir / "cost_table.json"
    table.to_json(path)
    log(f"  cost table: {len(points)} points -> {path}")
    target_cfg = model.config
    del model
    if cuda:
        torch.cuda.empty_cache()
    draft = draft_round_times(target_cfg, sizes=sizes, device=device, dtype=dtype, table=table, repeats=sizes.repeats)
    for r in draft["rounds"]:
        log(
            f"  draft batch {r['batch']}: {r['draft_round_seconds'] * 1e3:.2f} ms/round, Markov loop "
            f"{r['markov_share_of_round']:.2%} of the round"
        )
    return {
        "target_verify_grid": grid,
        "cost_table": table.to_dict(),
        "cost_table_file": path.name,
        "draft": draft,
    }


# ---------------------------------------------------------------------------- 4. cache I/O


def cache_section(device, *, sizes: Sizes, workdir: Path, gb: float, log) -> dict:
    """TargetCacheWriter fed from device tensors (the .cpu() copy included) and from host tensors vs a raw
    sequential write of the same bytes in the same file sizes to the same disk, in this run."""
    import numpy as np

    from deepspec.cache.format import sample_nbytes
    from deepspec.cache.writer import TargetCacheWriter, finalize_target_cache

    btc = bench_target_cache()
    layers, hidden = len(sizes.layer_ids), sizes.hidden
    args = SimpleNamespace(layers=layers, hidden=hidden, shard_mb=256 if sizes == FULL else 1)
    pool = btc.make_pool(4, tokens=sizes.seq_len, layers=layers, hidden=hidden)
    per = [sample_nbytes(len(s["input_ids"]), hidden_width=layers * hidden, hidden_size=hidden) for s in pool]
    samples = max(len(pool), int(gb * (1 << 30) / (sum(per) / len(per))))
    chunks = [per[i % len(per)] for i in range(samples)]
    sizes_ = btc.shard_sizes(chunks, args.shard_mb << 20)
    data = memoryview(np.random.default_rng(0).integers(0, 256, max(per), dtype=np.uint8).tobytes())
    on_device = [{k: v.to(device) for k, v in s.items()} for s in pool]
    root = Path(tempfile.mkdtemp(prefix="cache_io_", dir=workdir))
    total = sum(sizes_)
    try:
        btc.settle()
        raw_s, _ = btc.write_raw(root / "raw", sizes_, chunks, data)
        btc.settle()
        _sync(device)
        t0 = time.perf_counter()
        with TargetCacheWriter(
            root / "from_device",
            target_model="gpu-check",
            layer_ids=list(range(layers)),
            hidden_size=hidden,
            max_shard_bytes=args.shard_mb << 20,
        ) as w:
            for i in range(samples):
                w.add(source_index=i, **{k: v.cpu() for k, v in on_device[i % len(on_device)].items()})
        device_s = time.perf_counter() - t0
        finalize_target_cache(root / "from_device")
        btc.settle()
        host_s, _ = btc.write_cache(root / "from_host", samples, pool, args)
        written = sum(p.stat().st_size for p in (root / "from_device").glob("rank*.bin"))
        assert written == total, f"writer wrote {written} shard bytes, the raw write {total}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = {
        "disk_folder": str(workdir),
        "bytes": total,
        "samples": samples,
        "shard_bytes": args.shard_mb << 20,
        "raw_write_bytes_per_s": total / raw_s,
        "writer_from_device_bytes_per_s": total / device_s,
        "writer_from_host_bytes_per_s": total / host_s,
        "writer_from_device_vs_raw": raw_s / device_s,
        "writer_from_host_vs_raw": raw_s / host_s,
        "source_device": str(device),
        "note": "write = until fsynced; the writer includes checksums, renames and (from device) the .cpu() copy",
    }
    log(
        f"  raw {out['raw_write_bytes_per_s'] / 1e6:.0f} MB/s, writer from {device} "
        f"{out['writer_from_device_bytes_per_s'] / 1e6:.0f} MB/s ({out['writer_from_device_vs_raw']:.0%} of raw)"
    )
    return out


# ---------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/gpu_check.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="where to run (default: cuda when a GPU is visible, else cpu); CUDA-only checks are skipped on cpu",
    )
    p.add_argument(
        "--small",
        action="store_true",
        help="tiny shapes everywhere (hidden 64, vocab 512, 256-token samples, 16 anchors; small cache I/O) "
        "instead of Qwen3-4B's (hidden 2560, 36 layers, vocab 151936, 4096 tokens, 512 anchors x 7)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for gpu_check.json, cost_table.json and gpu_check.log (default: $OUT, else ./gpu_check_out)",
    )
    p.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="sections to run (default: all); the others are recorded as skipped",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="scratch folder for the synthetic caches and the cache I/O files, i.e. the disk measured "
        "(default: a temp folder under $TMPDIR, removed at the end)",
    )
    p.add_argument(
        "--cache-gb", type=float, default=None, help="GiB written per cache I/O measurement (default: 2, --small 0.01)"
    )
    p.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="timed training steps per run after warm-up (default: 4, --small 2)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.train_steps is not None and args.train_steps < 1:
        p.error("--train-steps must be >= 1")
    if args.cache_gb is not None and not args.cache_gb > 0:
        p.error("--cache-gb must be > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda but no CUDA device is visible; use --device cpu", file=sys.stderr)
        return 2
    if device == "cuda":
        torch.cuda.set_device(0)
        device = "cuda:0"
    sizes = SMALL if args.small else FULL
    if args.train_steps:
        sizes = dataclasses.replace(sizes, train_steps=args.train_steps)
    caller = Path(os.environ.get("GPU_CHECK_CWD") or ".")  # set by gpu_check.sh (env.sh changes directory)
    out_dir = caller / (args.out or Path(os.environ.get("OUT") or "gpu_check_out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "gpu_check.log"
    log_file = open(log_path, "w")

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    class Tee:  # what the trainer and torch say on stderr goes into the log too
        def __init__(self, stream):
            self.stream = stream

        def write(self, text):
            log_file.write(text)
            return self.stream.write(text)

        def flush(self):
            log_file.flush()
            self.stream.flush()

        def __getattr__(self, name):
            return getattr(self.stream, name)

    stderr, sys.stderr = sys.stderr, Tee(sys.stderr)

    own_work = args.work_dir is None
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check_")) if own_work else caller / args.work_dir
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report = {
        "command": " ".join(["bench/gpu_check.sh", *(sys.argv[1:] if argv is None else argv)]),
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
        "small": bool(args.small),
        "versions": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
        },
        "torch_threads": torch.get_num_threads(),
        "sections": {},
    }
    failed = False
    try:
        for section in SECTIONS:
            if section not in args.sections:
                report["sections"][section] = {"status": "skipped: not in --sections"}
                continue
            log(f"[gpu_check] {section}")
            t0 = time.perf_counter()
            try:
                if section == "checks":
                    body = {}
                    for name, (fn, kwargs) in correctness_checks(device, workdir=workdir).items():
                        log(f" check {name}")
                        body[name] = run_check(fn, kwargs, log)
                    failed |= any(c["status"].startswith("fail") for c in body.values())
                    body = {"checks": body}
                elif section == "train":
                    body = train_section(device, sizes=sizes, workdir=workdir, log=log)
                    failed |= any(
                        str(body[a][m].get("status", "")).startswith("error")
                        for a in ("dspark", "eagle3")
                        for m in ("eager", "compiled", "flops_per_step")
                    )
                elif section == "decode":
                    body = decode_section(device, sizes=sizes, out_dir=out_dir, log=log)
                else:
                    gb = args.cache_gb if args.cache_gb is not None else sizes.cache_gb
                    body = cache_section(device, sizes=sizes, workdir=workdir, gb=gb, log=log)
                body["status"] = "ok"
            except Exception as exc:  # noqa: BLE001 - one broken section does not hide the others
                failed = True
                body = {"status": f"error: {type(exc).__name__}: {exc}"[:600], "traceback": traceback.format_exc()}
                log(f"  {body['status']}")
            body["seconds"] = time.perf_counter() - t0
            report["sections"][section] = body
    finally:
        if own_work:
            shutil.rmtree(workdir, ignore_errors=True)
        report["total_seconds"] = time.perf_counter() - t_start
        report["failed"] = failed
        path = out_dir / "gpu_check.json"
        path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        log(f"[gpu_check] {'FAILED' if failed else 'ok'} in {report['total_seconds']:.1f} s -> {path}")
        sys.stderr = stderr
        log_file.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
