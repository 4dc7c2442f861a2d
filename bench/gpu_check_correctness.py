"""bench/gpu_check.py section 1: correctness checks (also run by tests/test_gpu_check.py, marked gpu)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import tempfile
import time
import traceback
from pathlib import Path

from gpu_check_common import (
    CHECK,
    CONFIGS,
    EAGLE3_LAYER_IDS,
    SMALL,
    Sizes,
    Skip,
    endless,
    fresh_compile_caches,
    make_trainer,
    nccl_world_of_one,
    pieces_target,
    rel_error,
    require_cuda,
    run_steps,
    synthetic_cache,
    target_config,
    train_config,
    uncompiled_flex,
)

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
                err = {"logits_rel_err": rel_error(logits, ref_logits)}
                if backward:
                    err["grad_rel_err"] = rel_error(grads, ref_grads)
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
        err = {"logits_rel_err": rel_error(logits.cpu(), ref_logits), "grad_rel_err": rel_error(grads.cpu(), ref_grads)}
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
    from deepspec.algorithms import build_proposer
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
