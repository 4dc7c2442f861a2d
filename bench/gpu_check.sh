#!/usr/bin/env bash
# One-command device check (correctness, training throughput, decoding costs, cache I/O) -> $OUT/gpu_check.json.
# Sets up the environment (scripts/env.sh), then runs bench/gpu_check.py; relative --output-dir / --work-dir
# (and $OUT) mean the folder you run the script from.
#   bash bench/gpu_check.sh                        # GPU node, Qwen3-4B shapes (sized for < 5 min on one H200)
#   bash bench/gpu_check.sh --device cpu --small   # anywhere (CI)
# Every flag: bash bench/gpu_check.sh --help
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/cli.sh"
if ds_wants_help "$@"; then
  # gpu_check.py's --help needs only the standard library: any python 3, nothing installed, no .pyc written.
  "${DEEPSPEC_PYTHON:-python3}" -B "$(dirname "${BASH_SOURCE[0]}")/gpu_check.py" --help || ds_help "$0"
  exit 0
fi
ds_no_dry_run
export GPU_CHECK_CWD="$PWD"  # env.sh moves to the repo root; relative --output-dir / --work-dir stay the caller's
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
python bench/gpu_check.py "$@"
