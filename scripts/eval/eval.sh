#!/usr/bin/env bash
# Evaluate a draft by speculative decoding over the benchmark prompts (stage 3). Environment:
#   target_name_or_path  target (default: the tiny local target)
#   draft_name_or_path   draft step folder / checkpoint dir / hub id (required)
#   CUDA_VISIBLE_DEVICES GPUs (one worker per visible GPU shards the prompts; default: all)
# Extra arguments go to eval.py; bare name=value (or --opts name=value) is --name value, e.g.:
#   bash scripts/eval/eval.sh tasks=gsm8k:20 temperature=0   ==   ... --tasks gsm8k:20 --temperature 0
#   draft_name_or_path=runs/quickstart/checkpoints/dspark bash scripts/eval/eval.sh --tasks gsm8k:20 --temperature 0
#   ... --confidence-threshold 0.5   (DeepSpec's rule: cut the block at the first slot with confidence < 0.5)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../env.sh"  # the virtualenv; cds to the repo root
args=()
if [ -n "${target_name_or_path:-}" ]; then args+=(--target_name_or_path "$target_name_or_path"); fi
if [ -n "${draft_name_or_path:-}" ]; then args+=(--draft_name_or_path "$draft_name_or_path"); fi
for arg in "$@"; do
  case "$arg" in
    --opts) ;;
    -*) args+=("$arg") ;;
    *=*) args+=("--${arg%%=*}" "${arg#*=}") ;;
    *) args+=("$arg") ;;
  esac
done
exec python eval.py "${args[@]}"
