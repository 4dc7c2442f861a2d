"""Training throughput of the tiny configs on CPU: tokens/s and the share of time spent waiting for data.

A synthetic target cache (random tokens and hidden states, lengths 0.5-1x ``data.max_length``,
the first 30% of each sample outside the loss mask) for the tiny target; then each tiny config
(DSpark, DFlash, Eagle3, unchanged recipe: local batch 4, global 16, bf16 autocast) trains
``--steps`` steps. Step 1 (warm-up) is left out of the numbers.

    python bench/bench_train.py --steps 8 --num-workers 0
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from deepspec.config import load_config  # noqa: E402
from deepspec.data.target_cache import TargetCacheWriter, finalize_target_cache  # noqa: E402
from deepspec.tiny_target import build_random_tiny_target, default_tiny_target_dir, read_marker  # noqa: E402
from deepspec.training.metrics import read_metrics  # noqa: E402

CONFIGS = {"dspark": "config/dspark/dspark_tiny.py", "dflash": "config/dflash/dflash_tiny.py",
           "eagle3": "config/eagle3/eagle3_tiny.py"}


def synthetic_cache(path: Path, *, target: str, layer_ids: list[int], hidden: int, vocab: int, samples: int,
                    max_length: int) -> None:
    g = torch.Generator().manual_seed(0)
    with TargetCacheWriter(path, target_model=target, layer_ids=layer_ids, hidden_size=hidden) as writer:
        for i in range(samples):
            t = int(torch.randint(max_length // 2, max_length + 1, (1,), generator=g))
            mask = torch.zeros(t, dtype=torch.uint8)
            mask[int(0.3 * t):] = 1
            writer.add(source_index=i, input_ids=torch.randint(4, vocab, (t,), generator=g, dtype=torch.int32),
                       loss_mask=mask, hidden_states=torch.randn(t, len(layer_ids) * hidden, generator=g).bfloat16(),
                       last_hidden_state=torch.randn(t, hidden, generator=g).bfloat16())
    finalize_target_cache(path, expected_num_samples=samples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (data.num_workers)")
    p.add_argument("--algos", nargs="*", default=list(CONFIGS))
    args = p.parse_args()
    spec = importlib.util.spec_from_file_location("deepspec_train_entry", ROOT / "train.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        target = default_tiny_target_dir()
        kind = "trained tiny target"
        if read_marker(folder=target) is None:  # no built tiny target here: a random one has the same shapes
            target, kind = build_random_tiny_target(output_dir=tmp / "target", seed=0), "random tiny target"
        cfg0 = load_config(ROOT / CONFIGS["dspark"], opts=[f"model.target_model_name_or_path={target}"])
        from transformers import AutoConfig

        hf = AutoConfig.from_pretrained(target)
        synthetic_cache(tmp / "cache", target=str(target), layer_ids=list(cfg0.model.target_layer_ids),
                        hidden=hf.hidden_size, vocab=hf.vocab_size, samples=args.samples,
                        max_length=int(cfg0.data.max_length))
        rows = []
        for algo in args.algos:
            out = tmp / f"run_{algo}"
            cfg = load_config(ROOT / CONFIGS[algo], opts=[
                f"model.target_model_name_or_path={target}", f"train.max_train_steps={args.steps}",
                "logging.logging_steps=1", "logging.checkpointing_steps=0", f"logging.checkpoint_dir={out}",
                f"logging.tensorboard_dir={out}/tb", f"data.num_workers={args.num_workers}"])
            entry.run_training(cfg, cache_dir=str(tmp / "cache"), device="cpu", progress=False)
            recs = read_metrics(out / "metrics.jsonl")[1:]
            rows.append((algo, statistics.median(r["tokens_per_s"] for r in recs),
                         statistics.mean(r["data_wait_fraction"] for r in recs), recs[-1]["loss"]))
    print(f"\n{kind}; torch threads {torch.get_num_threads()}; global batch {cfg0.train.global_batch_size} "
          f"(local {cfg0.train.local_batch_size}); data.num_workers={args.num_workers}; steps 2..{args.steps}")
    print(f"{'algorithm':<10} {'tokens/s':>10} {'data wait':>10} {'last loss':>10}")
    for algo, tps, wait, loss in rows:
        print(f"{algo:<10} {tps:>10.0f} {wait:>9.1%} {loss:>10.3f}")


if __name__ == "__main__":
    main()
