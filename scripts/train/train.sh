#!/usr/bin/env bash
# Train a draft model. Environment:
#   config_path       config file (default: config/dspark/dspark_tiny.py)
#   target_cache_dir  target cache folder (default: data.target_cache_path of the config)
#   CUDA_VISIBLE_DEVICES  GPUs to use (default: 0-7, one worker each)
#   multi-node: RANK (node rank), WORLD_SIZE (node count), MASTER_ADDR, MASTER_PORT
# Extra arguments are config overrides:  bash scripts/train/train.sh train.lr=3e-4 exp_name=try2
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../env.sh"  # the virtualenv; cds to the repo root
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0,1,2,3,4,5,6,7}"
config_path="${config_path:-config/dspark/dspark_tiny.py}"
args=(--config "$config_path")
if [ -n "${target_cache_dir:-}" ]; then args+=(--target-cache-dir "$target_cache_dir"); fi
if [ "$#" -gt 0 ]; then args+=(--opts "$@"); fi
exec python train.py "${args[@]}"
