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
#   5. train DSpark, DFlash and Eagle3 (equal budgets, 2 gloo workers)   train.py
# Evaluation (stage 3) joins here when it lands.
set -euo pipefail
FAST=0
OUT=runs/quickstart
while [ $# -gt 0 ]; do
  case "$1" in
    --fast) FAST=1; OUT=runs/quickstart-fast ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
mkdir -p "$OUT"

if [ "$FAST" = 1 ]; then
  TARGET="${DEEPSPEC_TINY_TARGET:-$OUT/tiny_target}"; TARGET_BUDGET=(--steps 60); NUM_PROMPTS=24; MAX_TOKENS=48; TRAIN_STEPS=6
else
  TARGET="${DEEPSPEC_TINY_TARGET:-$HOME/.cache/deepspec/tiny_target}"; TARGET_BUDGET=(); NUM_PROMPTS=256; MAX_TOKENS=128; TRAIN_STEPS=60
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

for algo in dspark dflash eagle3; do
  # Same data, same steps and batch for all three: only the algorithm differs.
  stage "train $algo" python train.py --config "config/$algo/${algo}_tiny.py" --target-cache-dir "$OUT/cache" \
    --nproc 2 --no-progress --opts "train.max_train_steps=$TRAIN_STEPS" "logging.checkpointing_steps=$TRAIN_STEPS" \
    "logging.logging_steps=1" "logging.checkpoint_dir=$OUT/checkpoints/$algo" "logging.tensorboard_dir=$OUT/tensorboard/$algo"
done

echo; echo "==> training summary (first -> last logged step)"
python - "$OUT" <<'PY'
import json, sys, pathlib
for algo in ("dspark", "dflash", "eagle3"):
    rows = [json.loads(l) for l in (pathlib.Path(sys.argv[1]) / "checkpoints" / algo / "metrics.jsonl").read_text().splitlines() if l.strip()]
    first, last = rows[0], rows[-1]
    extra = "".join(f", {k} {first[k]:.3f} -> {last[k]:.3f}" for k in ("tau_probabilistic", "accuracy@0") if k in last)
    print(f"  {algo:7s} steps {last['step']:4d}: loss {first['loss']:.3f} -> {last['loss']:.3f}{extra}")
PY

echo; echo "==> done: outputs in $OUT"
printf '  %s\n' "${TIMINGS[@]}"
