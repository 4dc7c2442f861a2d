#!/usr/bin/env python
"""Build the embedded default target: a tiny Qwen3 chat model trained on the Python stdlib.

Runs offline on CPU. The output folder loads with AutoModelForCausalLM /
AutoTokenizer like any hub model. An existing complete build with the same
seed and step count is reused unless --overwrite is given.

Example (from the repo root):
    python scripts/data/build_tiny_target.py --output-dir /tmp/tiny_target --minutes 5
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys


def parse_args(argv=None) -> argparse.Namespace:
    from deepspec.cli import add_overwrite
    from deepspec.tiny_target import STEPS_PER_MINUTE, default_tiny_target_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output-dir",
        type=pathlib.Path,
        default=None,
        help=f"where to write the model folder (default: $DEEPSPEC_TINY_TARGET or {default_tiny_target_dir()})",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=5.0,
        help=f"nominal CPU budget; mapped to a fixed step count "
        f"(round(minutes * {STEPS_PER_MINUTE:g})) so builds are reproducible (default: 5)",
    )
    parser.add_argument("--steps", type=int, default=None, help="exact number of optimizer steps; overrides --minutes")
    parser.add_argument("--seed", type=int, default=0, help="seed for init and data order (default: 0)")
    add_overwrite(parser, aliases=("--force",), help="rebuild even if a complete build with the same seed/steps exists")
    return parser.parse_args(argv)


from deepspec.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    from deepspec.tiny_target import MARKER_NAME, build_tiny_target

    out = build_tiny_target(
        output_dir=args.output_dir, minutes=args.minutes, steps=args.steps, seed=args.seed, force=args.overwrite
    )
    info = json.loads((out / MARKER_NAME).read_text())
    print(f"tiny target: {out}")
    print(f"  steps {info['steps']}, params {info['num_parameters']:,}, build {info['build_seconds']:.0f}s")
    print(f"  val loss {info['val_loss']:.4f}, perplexity {math.exp(info['val_loss']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
