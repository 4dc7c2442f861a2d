#!/usr/bin/env python
"""Stage 1b: run the target over the training conversations and cache its hidden states.

Tokenizes every conversation with the target's chat template (loss mask = the
assistant's tokens plus its end-of-turn token), runs one target forward per
batch capturing `model.target_layer_ids` and the post-norm last hidden state,
and writes the sharded cache described in docs/data.md. Prints the estimated size
first and refuses when the disk lacks room. Interrupted builds resume when the
same command is re-run. A folder already holding a cache (or a partial build) of
another target, layer set, max length, data file or setting is refused with what
differs; pass --overwrite to rebuild it, or choose a new --output-dir.

Example (tiny target, CPU):
  python scripts/data/prepare_target_cache.py --config config/dspark/dspark_tiny.py \\
      --train-data-path runs/data/train_regen.jsonl --output-dir runs/cache/tiny
"""

import argparse
import sys


from deepspec.run_config import add_opts_argument, load_config  # noqa: E402
from deepspec.errors import DeepSpecError, cli_main  # noqa: E402


def _count(minimum: int):
    """argparse type: an integer >= minimum, refused at parse time with the option's own message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config (.py); gives target, layer ids, max_length")
    add_opts_argument(p, example="data.max_length=2048")
    p.add_argument(
        "--train-data-path",
        action="append",
        default=None,
        help="conversation JSONL file or folder (repeatable); default: data.train_data_paths",
    )
    p.add_argument("--output-dir", default=None, help="cache folder; default: data.target_cache_path")
    p.add_argument(
        "--min-loss-tokens",
        type=_count(0),
        default=None,
        help="drop samples with fewer supervised tokens; default: data.min_loss_tokens (14 in the paper recipes)",
    )
    p.add_argument("--max-shard-bytes", type=_count(1), default=2 << 30, help="start a new shard file beyond this size")
    p.add_argument("--local-batch-size", type=_count(1), default=8, help="conversations per target forward")
    p.add_argument("--nproc", type=_count(1), default=None, help="workers (default: one per visible GPU; CPU: 1)")
    p.add_argument("--num-workers", type=_count(1), default=None, help="alias of --nproc (DeepSpec spelling)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument(
        "--long-samples",
        choices=["truncate", "skip"],
        default="truncate",
        help="what to do with conversations longer than data.max_length",
    )
    p.add_argument("--strict", action="store_true", help="fail on the first bad conversation instead of skipping")
    p.add_argument("--ignore-disk-space", action="store_true", help="build even if the estimate exceeds free space")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the cache (or partial build) already in --output-dir and build anew; without it a "
        "folder holding another build is refused",
    )
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, opts=args.opts)
    paths = args.train_data_path or list(cfg.data.get("train_data_paths") or [])
    output_dir = args.output_dir or cfg.data.get("target_cache_path")
    if not paths:
        raise DeepSpecError("no training data: pass --train-data-path FILE or set data.train_data_paths")
    if not output_dir:
        raise DeepSpecError("no output folder: pass --output-dir DIR or set data.target_cache_path")
    from deepspec.cache.build import build_target_cache  # torch: only once the command line is sound

    build_target_cache(
        cfg=cfg,
        train_data_paths=paths,
        output_dir=output_dir,
        min_loss_tokens=int(cfg.data.min_loss_tokens) if args.min_loss_tokens is None else args.min_loss_tokens,
        max_shard_bytes=args.max_shard_bytes,
        batch_size=args.local_batch_size,
        nproc=args.nproc or args.num_workers,
        device=args.device,
        strict=args.strict,
        long_samples=args.long_samples,
        ignore_disk_space=args.ignore_disk_space,
        overwrite=args.overwrite,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
