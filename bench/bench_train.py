"""Training throughput of the tiny configs on CPU: tokens/s and the share of time spent waiting for data.

A synthetic target cache (random tokens and hidden states, lengths 0.5-1x ``data.max_length``,
the first 30% of each sample outside the loss mask) for the tiny target; then each tiny config
(DSpark, DFlash, Eagle3, unchanged recipe: local batch 4, global 16, bf16 autocast) trains
``--steps`` steps. Step 1 (warm-up) is left out of the numbers.

    python bench/bench_train.py --steps 8 --num-workers 0

``--online``: the same configs trained offline (from a target cache) and online (train.py --online:
the target runs live over the conversations) in one run, on the same data. A synthetic regen.jsonl
of ``--num-samples`` two-turn conversations (short code answers, ~250-500 tokens each) is written, a
cache is built from that file with the cache builder, then each config trains ``--steps`` steps
from the cache and from the file. Per run: step time (mean of steps 2..N), tokens/s, the share of
wall time the target forward took (metrics ``target_forward_s`` / wall time of those steps) and the
data-wait share (online, the target forward happens inside the data wait). One extra step closes
each run so its checkpoint save is not timed. ``--target DIR`` trains against another target folder
(e.g. a Qwen3-4B-shaped random target on a GPU, with ``--device cuda``; the tiny configs' layer ids
0,1,2 and mask id 3 suit any target built by ``build_random_tiny_target``):

    python bench/bench_train.py --online --steps 4
    python -c "from deepspec.tiny_target import build_random_tiny_target as b; b(output_dir='/tmp/q3_4b', \\
        hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32, \\
        num_key_value_heads=8, head_dim=128)"
    python bench/bench_train.py --online --steps 8 --target /tmp/q3_4b --device cuda

``--compile``: each config (default: DSpark and Eagle3) trained eagerly and with ``train.torch_compile=True``
from the same synthetic cache, each run in its own process with an empty inductor cache (so the compile is
the cold one a first run pays). Per run: step 1 (the compiled run builds its graphs there), the mean step
time of steps 3..N, tokens/s and the process's peak RSS; per config the compiled / eager step-time ratio and
the compile time (compiled step 1 minus eager step 1):

    python bench/bench_train.py --compile --steps 10
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from deepspec.cli import add_num_samples  # noqa: E402
from deepspec.run_config import load_config  # noqa: E402
from deepspec.cache.writer import TargetCacheWriter, finalize_target_cache  # noqa: E402
from deepspec.tiny_target import build_random_tiny_target, default_tiny_target_dir, read_marker  # noqa: E402
from deepspec.training.metrics import read_metrics  # noqa: E402

CONFIGS = {
    "dspark": "config/dspark/dspark_tiny.py",
    "dflash": "config/dflash/dflash_tiny.py",
    "eagle3": "config/eagle3/eagle3_tiny.py",
}


def synthetic_cache(
    path: Path, *, target: str, layer_ids: list[int], hidden: int, vocab: int, samples: int, max_length: int
) -> None:
    g = torch.Generator().manual_seed(0)
    with TargetCacheWriter(path, target_model=target, layer_ids=layer_ids, hidden_size=hidden) as writer:
        for i in range(samples):
            t = int(torch.randint(max_length // 2, max_length + 1, (1,), generator=g))
            mask = torch.zeros(t, dtype=torch.uint8)
            mask[int(0.3 * t) :] = 1
            writer.add(
                source_index=i,
                input_ids=torch.randint(4, vocab, (t,), generator=g, dtype=torch.int32),
                loss_mask=mask,
                hidden_states=torch.randn(t, len(layer_ids) * hidden, generator=g).bfloat16(),
                last_hidden_state=torch.randn(t, hidden, generator=g).bfloat16(),
            )
    finalize_target_cache(path, expected_num_samples=samples)


def synthetic_conversations(path: Path, *, samples: int, seed: int = 0) -> None:
    """A regen.jsonl of two-turn conversations whose answers are short Python functions (the tiny
    tokenizer's domain): ~250-500 tokens each with the tiny tokenizer, most of them assistant tokens."""
    rng = random.Random(seed)

    def body(name: str, lines: int) -> str:
        out = [f"def {name}(items, limit):", "    total = 0"]
        for j in range(lines):
            v = rng.choice(["value", "item", "count", "score", "offset"])
            out += [
                f"    {v}_{j} = items[{j}] * {rng.randint(2, 99)} + len(items) // {rng.randint(1, 9)}",
                f"    if {v}_{j} > limit:",
                f"        total += {v}_{j}",
            ]
        return "\n".join(out + ["    return total"])

    with open(path, "w") as f:
        for i in range(samples):
            turns = [
                {"role": "user", "content": f"Write a function step_{i}(items, limit) that sums scaled items."},
                {"role": "assistant", "content": body(f"step_{i}", rng.randint(4, 9))},
                {"role": "user", "content": "Now a shorter variant."},
                {"role": "assistant", "content": body(f"step_{i}_short", rng.randint(1, 3))},
            ]
            f.write(json.dumps({"id": f"bench{i}", "conversations": turns}) + "\n")


def timed_run(entry, cfg, *, device: str, **source) -> tuple[list[dict], list[float]]:
    """Train ``cfg``; (metrics records, wall seconds of each step 2..N, N = max_train_steps - 1).

    Step k's wall time is the time between the ends of steps k-1 and k; the last step (with its
    checkpoint save) is only there to close the run and is not timed."""
    ends: list[float] = []
    entry.run_training(
        cfg, device=device, progress=False, on_step_end=lambda step: ends.append(time.perf_counter()), **source
    )
    recs = read_metrics(Path(cfg.logging.checkpoint_dir) / "metrics.jsonl")
    walls = [b - a for a, b in zip(ends[:-2], ends[1:-1])]
    return recs[1 : len(walls) + 1], walls


def online_bench(args, entry, tmp: Path, target: Path, kind: str) -> None:
    from deepspec.cache.build import build_target_cache

    data = tmp / "regen.jsonl"
    synthetic_conversations(data, samples=args.num_samples)
    base = [
        f"model.target_model_name_or_path={target}",
        f"train.max_train_steps={args.steps + 1}",
        "logging.logging_steps=1",
        "logging.checkpointing_steps=0",
        f"data.num_workers={args.num_workers}",
    ]
    cfg0 = load_config(ROOT / CONFIGS["dspark"], opts=base)
    t0 = time.perf_counter()
    manifest = build_target_cache(
        cfg=cfg0,
        train_data_paths=[str(data)],
        output_dir=tmp / "cache",
        min_loss_tokens=int(cfg0.data.min_loss_tokens),
        max_shard_bytes=1 << 28,
        batch_size=args.cache_batch_size,
        nproc=1,
        device=args.device,
        log=lambda _: None,
    )
    build_s = time.perf_counter() - t0
    rows = []
    for algo in args.algos:
        for mode in ("offline", "online"):
            out = tmp / f"run_{algo}_{mode}"
            cfg = load_config(
                ROOT / CONFIGS[algo], opts=base + [f"logging.checkpoint_dir={out}", f"logging.tensorboard_dir={out}/tb"]
            )
            source = (
                {"cache_dir": str(tmp / "cache")}
                if mode == "offline"
                else {"online": True, "train_data_paths": [str(data)]}
            )
            recs, walls = timed_run(entry, cfg, device=args.device, **source)
            wall = sum(walls)
            tokens = sum(r["tokens_per_s"] * w for r, w in zip(recs, walls))  # the trainer's window ~ the step
            rows.append(
                (
                    algo,
                    mode,
                    wall / len(walls),
                    tokens / wall,
                    sum(r["target_forward_s"] for r in recs) / wall,
                    sum(r["data_wait_fraction"] * w for r, w in zip(recs, walls)) / wall,
                    recs[-1]["loss"],
                )
            )
    samples = manifest.get("num_samples", "?") if isinstance(manifest, dict) else "?"
    print(
        f"\n{kind} ({target}); device {args.device}; torch threads {torch.get_num_threads()}; "
        f"global batch {cfg0.train.global_batch_size} (local {cfg0.train.local_batch_size}); "
        f"max_length {cfg0.data.max_length}; data.num_workers={args.num_workers}; {samples} conversations "
        f"(cache built in {build_s:.1f} s, batch {args.cache_batch_size}); timed steps 2..{args.steps}"
    )
    print(
        f"{'algorithm':<10} {'mode':<8} {'step s':>8} {'tokens/s':>10} {'target fwd':>11} {'data wait':>10} "
        f"{'last loss':>10}"
    )
    for algo, mode, step_s, tps, fwd, wait, loss in rows:
        print(f"{algo:<10} {mode:<8} {step_s:>8.3f} {tps:>10.0f} {fwd:>10.1%} {wait:>10.1%} {loss:>10.3f}")
    print("target fwd = target_forward_s / step wall time; online the forward runs inside the data wait.")


def offline_cache(args, tmp: Path, target: Path):
    """The synthetic cache every offline run reads: (the DSpark tiny config on ``target``, the cache folder)."""
    from transformers import AutoConfig

    cfg0 = load_config(ROOT / CONFIGS["dspark"], opts=[f"model.target_model_name_or_path={target}"])
    hf = AutoConfig.from_pretrained(target)
    synthetic_cache(
        tmp / "cache",
        target=str(target),
        layer_ids=list(cfg0.model.target_layer_ids),
        hidden=hf.hidden_size,
        vocab=hf.vocab_size,
        samples=args.num_samples,
        max_length=int(cfg0.data.max_length),
    )
    return cfg0, tmp / "cache"


def run_opts(args, *, target: Path, out: Path, steps: int) -> list[str]:
    return [
        f"model.target_model_name_or_path={target}",
        f"train.max_train_steps={steps}",
        "logging.logging_steps=1",
        "logging.checkpointing_steps=0",
        f"logging.checkpoint_dir={out}",
        f"logging.tensorboard_dir={out}/tb",
        f"data.num_workers={args.num_workers}",
    ]


def offline_bench(args, entry, tmp: Path, target: Path, kind: str) -> None:
    cfg0, cache = offline_cache(args, tmp, target)
    rows = []
    for algo in args.algos:
        out = tmp / f"run_{algo}"
        cfg = load_config(ROOT / CONFIGS[algo], opts=run_opts(args, target=target, out=out, steps=args.steps))
        entry.run_training(cfg, cache_dir=str(cache), device=args.device, progress=False)
        recs = read_metrics(out / "metrics.jsonl")[1:]
        rows.append(
            (
                algo,
                statistics.median(r["tokens_per_s"] for r in recs),
                statistics.mean(r["data_wait_fraction"] for r in recs),
                recs[-1]["loss"],
            )
        )
    print(
        f"\n{kind}; torch threads {torch.get_num_threads()}; global batch {cfg0.train.global_batch_size} "
        f"(local {cfg0.train.local_batch_size}); data.num_workers={args.num_workers}; steps 2..{args.steps}"
    )
    print(f"{'algorithm':<10} {'tokens/s':>10} {'data wait':>10} {'last loss':>10}")
    for algo, tps, wait, loss in rows:
        print(f"{algo:<10} {tps:>10.0f} {wait:>9.1%} {loss:>10.3f}")


def compile_run(*, config: str, opts: list[str], cache: str, device: str, result: str) -> None:
    """One training run in a fresh process (its own peak RSS, dynamo and inductor state); writes ``result``."""
    from deepspec.launch import DistInfo
    from deepspec.training.trainer import Trainer

    cfg = load_config(ROOT / config, opts=opts)
    dev = torch.device(device if device == "cpu" else "cuda:0")
    ends: list[float] = []
    trainer = Trainer(
        cfg=cfg,
        cache_dir=cache,
        info=DistInfo(rank=0, local_rank=0, world_size=1, device=dev),
        progress=False,
        on_step_end=lambda step: ends.append(time.perf_counter()),
    )
    t0 = time.perf_counter()
    trainer.fit()
    recs = read_metrics(Path(cfg.logging.checkpoint_dir) / "metrics.jsonl")
    Path(result).write_text(
        json.dumps(
            {
                "walls": [b - a for a, b in zip([t0] + ends[:-1], ends)],
                "records": recs,
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
                "graphs": int(torch._dynamo.utils.counters["stats"]["unique_graphs"]),
            }
        )
    )


def spawn_run(tmp: Path, name: str, **kwargs) -> dict:
    """:func:`compile_run` in a spawned process with an empty inductor cache of its own (a cold compile)."""
    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / f"inductor_{name}")
    try:
        proc = multiprocessing.get_context("spawn").Process(
            target=compile_run, kwargs=dict(kwargs, result=str(tmp / f"{name}.json"))
        )
        proc.start()
        proc.join()
    finally:
        if saved is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved
    if proc.exitcode != 0:
        raise SystemExit(f"bench_train.py: error: the {name} run failed (exit code {proc.exitcode}); see above")
    return json.loads((tmp / f"{name}.json").read_text())


def compile_bench(args, tmp: Path, target: Path, kind: str) -> None:
    """Eager vs train.torch_compile=True, per config: step times, their ratio, compile time, peak RSS."""
    cfg0, cache = offline_cache(args, tmp, target)
    timed = slice(2, args.steps)  # steps 3..N; one more step closes the run (its checkpoint save is not timed)
    rows, ratios, precision = [], [], "?"
    for algo in args.algos:
        runs = {}
        for mode in ("eager", "compiled"):
            out = tmp / f"run_{algo}_{mode}"
            opts = run_opts(args, target=target, out=out, steps=args.steps + 1)
            opts.append(f"train.torch_compile={mode == 'compiled'}")
            got = spawn_run(
                tmp, f"{algo}_{mode}", config=CONFIGS[algo], opts=opts, cache=str(cache), device=args.device
            )
            recs, walls = got["records"][timed], got["walls"][timed]
            precision = recs[-1]["precision"]
            runs[mode] = (got["walls"][0], statistics.mean(walls))
            rows.append(
                (
                    algo,
                    mode,
                    got["walls"][0],
                    statistics.mean(walls),
                    statistics.median(r["tokens_per_s"] for r in recs),
                    got["peak_rss"] / 2**30,
                    got["graphs"],
                    {r["compiled"] for r in got["records"]} == {mode == "compiled"},
                    got["records"][-1]["loss"],
                )
            )
        (eager_first, eager_step), (compiled_first, compiled_step) = runs["eager"], runs["compiled"]
        ratios.append((algo, compiled_step / eager_step, compiled_first - eager_first))
    print(
        f"\n{kind}; device {args.device}; torch {torch.__version__}, threads {torch.get_num_threads()}; global batch "
        f"{cfg0.train.global_batch_size} (local {cfg0.train.local_batch_size}); max_length {cfg0.data.max_length}; "
        f"compute dtype {precision}; attention {cfg0.model.attention_backend}; each run a fresh process with "
        f"an empty inductor cache; timed steps 3..{args.steps}"
    )
    print(
        f"{'algorithm':<10} {'mode':<9} {'step 1 s':>9} {'step s':>8} {'tokens/s':>9} {'peak RSS':>9} "
        f"{'graphs':>7} {'last loss':>10}"
    )
    for algo, mode, first, step, tps, rss, graphs, as_asked, loss in rows:
        flag = "" if as_asked else "  (fell back: see the warning above)"
        print(
            f"{algo:<10} {mode:<9} {first:>9.2f} {step:>8.3f} {tps:>9.0f} {rss:>7.2f} G {graphs:>7} {loss:>10.3f}{flag}"
        )
    for algo, ratio, compile_s in ratios:
        print(
            f"{algo}: compiled / eager step time {ratio:.2f} (compiled {1 / ratio:.2f}x the eager speed); "
            f"compile time {compile_s:.1f} s (compiled step 1 - eager step 1)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per algorithm (default: 8)")
    add_num_samples(p, aliases=("--samples",), default=64, help="synthetic conversations to train on (default: 64)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (data.num_workers)")
    p.add_argument(
        "--algos",
        nargs="*",
        default=None,
        choices=list(CONFIGS),
        help="algorithms to time (default: all; with --compile: dspark eagle3)",
    )
    p.add_argument(
        "--online",
        action="store_true",
        help="offline vs online (target run live) on the same synthetic conversations; --num-samples conversations",
    )
    p.add_argument(
        "--target",
        type=Path,
        default=None,
        help="target model folder (default: the tiny target if built, else a random one of its shape)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="eager vs train.torch_compile=True per config (default configs: dspark eagle3): step time ratio, "
        "compile time, peak RSS; each run in a fresh process with an empty inductor cache",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default: cpu)")
    p.add_argument("--cache-batch-size", type=int, default=8, help="--online: cache builder batch size")
    args = p.parse_args()
    if args.compile and args.online:
        p.error("--compile and --online are separate benchmarks; give one of them")
    if args.algos is None:
        args.algos = ["dspark", "eagle3"] if args.compile else list(CONFIGS)
    if args.steps < 2:
        p.error("--steps must be >= 2 (step 1 is warm-up and left out)")
    if args.compile and args.steps < 3:
        p.error("--compile needs --steps >= 3 (steps 1 and 2 are left out: the compiled run builds its graphs)")
    if args.target is not None and not (args.target / "config.json").is_file():
        p.error(f"--target {args.target}: no config.json there; give a model folder")
    spec = importlib.util.spec_from_file_location("deepspec_train_entry", ROOT / "train.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        target = args.target or default_tiny_target_dir()
        kind = "given target" if args.target else "trained tiny target"
        # no built tiny target here: a random one has the same shapes
        if args.target is None and read_marker(folder=target) is None:
            target, kind = build_random_tiny_target(output_dir=tmp / "target", seed=0), "random tiny target"
        if args.online:
            online_bench(args, entry, tmp, target, kind)
        elif args.compile:
            compile_bench(args, tmp, target, kind)
        else:
            offline_bench(args, entry, tmp, target, kind)


if __name__ == "__main__":
    main()
