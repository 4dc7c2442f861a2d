#!/usr/bin/env python
"""Stage 1b: run the target over the training conversations and cache its hidden states.

Tokenizes every conversation with the target's chat template (loss mask = the
assistant's tokens plus its end-of-turn token), runs one target forward per
batch capturing `model.target_layer_ids` and the post-norm last hidden state,
and writes the sharded cache described in DESIGN.md. Prints the estimated size
first and refuses when the disk lacks room. Interrupted builds resume when the
same command is re-run.

Example (tiny target, CPU):
  python scripts/data/prepare_target_cache.py --config config/dspark/dspark_tiny.py \\
      --train-data-path runs/data/train_regen.jsonl --output-dir runs/cache/tiny
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from deepspec.config import add_opts_argument, load_config  # noqa: E402
from deepspec.data.cache_build import build_target_cache  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config (.py); gives target, layer ids, max_length")
    add_opts_argument(p, example="data.max_length=2048")
    p.add_argument("--train-data-path", action="append", default=None,
                   help="conversation JSONL file or folder (repeatable); default: data.train_data_paths")
    p.add_argument("--output-dir", default=None, help="cache folder; default: data.target_cache_path")
    p.add_argument("--min-loss-tokens", type=int, default=14, help="drop samples with fewer supervised tokens")
    p.add_argument("--max-shard-bytes", type=int, default=2 << 30, help="start a new shard file beyond this size")
    p.add_argument("--local-batch-size", type=int, default=8, help="conversations per target forward")
    p.add_argument("--nproc", type=int, default=None,
                   help="workers (default: one per visible GPU; CPU: 1)")
    p.add_argument("--num-workers", type=int, default=None, help="alias of --nproc (DeepSpec spelling)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--long-samples", choices=["truncate", "skip"], default="truncate",
                   help="what to do with conversations longer than data.max_length")
    p.add_argument("--strict", action="store_true", help="fail on the first bad conversation instead of skipping")
    p.add_argument("--ignore-disk-space", action="store_true", help="build even if the estimate exceeds free space")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, opts=args.opts)
    paths = args.train_data_path or list(cfg.data.train_data_paths)
    output_dir = args.output_dir or cfg.data.target_cache_path
    if not paths:
        sys.exit("no training data: pass --train-data-path or set data.train_data_paths")
    if not output_dir:
        sys.exit("no output folder: pass --output-dir or set data.target_cache_path")
    build_target_cache(cfg=cfg, train_data_paths=paths, output_dir=output_dir,
                       min_loss_tokens=args.min_loss_tokens, max_shard_bytes=args.max_shard_bytes,
                       batch_size=args.local_batch_size, nproc=args.nproc or args.num_workers,
                       device=args.device, strict=args.strict, long_samples=args.long_samples,
                       ignore_disk_space=args.ignore_disk_space)


if __name__ == "__main__":
    main()
