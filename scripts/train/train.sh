#!/usr/bin/env bash
# Train a draft model. Environment:
#   config_path       config file (default: config/dspark/dspark_tiny.py)
#   target_cache_dir  target cache folder (default: data.target_cache_path of the config)
#   train_data_path   online mode instead: regenerated JSONL file(s), space-separated (adds --online)
#   CUDA_VISIBLE_DEVICES  GPUs to use (default: 0-7, one worker each)
#   multi-node: NODE_RANK (this node), NNODES (node count), MASTER_ADDR, MASTER_PORT (or start train.py with torchrun)
# Extra arguments: config overrides, bare or after --opts (repeatable), and train.py flags:
#   bash scripts/train/train.sh train.lr=3e-4 exp_name=try2
#   bash scripts/train/train.sh --opts train.lr=3e-4 --opts exp_name=try2 --nproc 2
#   train_data_path="a.jsonl b.jsonl" bash scripts/train/train.sh     # online: the target runs live
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../env.sh"  # the virtualenv; cds to the repo root
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0,1,2,3,4,5,6,7}"
config_path="${config_path:-config/dspark/dspark_tiny.py}"
args=(--config "$config_path")
if [ -n "${target_cache_dir:-}" ]; then args+=(--target-cache-dir "$target_cache_dir"); fi
if [ -n "${train_data_path:-}" ]; then
  args+=(--online)
  for file in $train_data_path; do args+=(--train-data-path "$file"); done
fi
overrides=()
for arg in "$@"; do
  case "$arg" in
    --opts) ;;                                   # DeepSpec's spelling: the overrides follow
    -*) args+=("$arg") ;;                        # a train.py flag (e.g. --nproc)
    *=*) overrides+=("$arg") ;;                  # key.path=value
    *) args+=("$arg") ;;                         # a flag's value (e.g. the 2 of --nproc 2)
  esac
done
if [ "${#overrides[@]}" -gt 0 ]; then args+=(--opts "${overrides[@]}"); fi
exec python train.py "${args[@]}"
