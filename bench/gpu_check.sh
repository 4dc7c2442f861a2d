#!/usr/bin/env bash
# One-command device check (correctness, training throughput, decoding costs, cache I/O) -> $OUT/gpu_check.json.
#   bash bench/gpu_check.sh                        # GPU node, Qwen3-4B shapes (sized for < 5 min on one H200)
#   bash bench/gpu_check.sh --device cpu --small   # anywhere (CI)
# Every flag: bash bench/gpu_check.sh --help
export GPU_CHECK_CWD="$PWD"  # env.sh moves to the repo root; relative --out / --work-dir stay the caller's
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
python bench/gpu_check.py "$@"
