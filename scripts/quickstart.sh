#!/usr/bin/env bash
# The main job on the embedded default: the tiny local target, end to end, on CPU.
#
#   bash scripts/quickstart.sh [--fast] [--out DIR]
#
# Stages (each reused when already finished, so a re-run picks up where it stopped):
#   1. build (or reuse) the tiny target            scripts/data/build_tiny_target.py
#   2. training prompts from held-out stdlib code  python -m deepspec.data.local_prompts
#   3. regenerate the answers with the target      scripts/data/generate_train_data.py
#   4. target cache                                scripts/data/prepare_target_cache.py
# Training and evaluation join here as those stages land.
set -euo pipefail
FAST=0
OUT=runs/quickstart
while [ $# -gt 0 ]; do
  case "$1" in
    --fast) FAST=1; OUT=runs/quickstart-fast ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
mkdir -p "$OUT"

if [ "$FAST" = 1 ]; then
  TARGET="${DEEPSPEC_TINY_TARGET:-$OUT/tiny_target}"; TARGET_BUDGET=(--steps 60); NUM_PROMPTS=24; MAX_TOKENS=48
else
  TARGET="${DEEPSPEC_TINY_TARGET:-$HOME/.cache/deepspec/tiny_target}"; TARGET_BUDGET=(); NUM_PROMPTS=256; MAX_TOKENS=128
fi
export DEEPSPEC_TINY_TARGET="$TARGET"

declare -a TIMINGS=()
stage() {  # stage NAME COMMAND...: run, time, remember
  local name="$1"; shift
  echo; echo "==> $name"
  local t0=$SECONDS
  "$@"
  TIMINGS+=("$(printf '%-28s %5ds' "$name" $((SECONDS - t0)))")
}

stage "tiny target" python scripts/data/build_tiny_target.py --output-dir "$TARGET" "${TARGET_BUDGET[@]}"
if [ ! -s "$OUT/data/prompts.jsonl" ]; then
  stage "training prompts" python -m deepspec.data.local_prompts --output-file-path "$OUT/data/prompts.jsonl" --num "$NUM_PROMPTS"
fi
stage "regenerate answers" python scripts/data/generate_train_data.py --model "$TARGET" \
  --input-file-path "$OUT/data/prompts.jsonl" --output-file-path "$OUT/data/train_regen.jsonl" \
  --max-tokens "$MAX_TOKENS" --temperature 0.7 --seed 0 --resume
stage "target cache" python scripts/data/prepare_target_cache.py --config config/dspark/dspark_tiny.py \
  --train-data-path "$OUT/data/train_regen.jsonl" --output-dir "$OUT/cache" --min-loss-tokens 4

echo; echo "==> done: outputs in $OUT"
printf '  %s\n' "${TIMINGS[@]}"
