"""bench/gpu_check.py sections 2-4: training throughput, decoding costs, cache I/O."""

from __future__ import annotations

import resource
import shutil
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

from gpu_check_common import (
    EAGLE3_LAYER_IDS,
    FULL,
    H200_BF16_DENSE_FLOPS,
    Sizes,
    bench_target_cache,
    endless,
    fresh_compile_caches,
    make_trainer,
    pieces_target,
    profile_engine,
    run_steps,
    sync,
    synthetic_cache,
    target_config,
    train_config,
)

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
                row[mode] = {"status": "skipped: on CPU (slow to compile; bench_train.py --compile measures it)"}
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
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
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
        sync(device)
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
