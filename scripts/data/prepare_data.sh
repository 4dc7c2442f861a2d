#!/usr/bin/env bash
# Stage 1 end to end with the Qwen3-4B, 8-GPU defaults. Every variable below can
# be set in the environment; extra arguments go to prepare_target_cache.py.
#
#   bash scripts/data/prepare_data.sh
#   MODEL=Qwen/Qwen3-8B CONFIG=config/dspark/dspark_qwen3_8b.py bash scripts/data/prepare_data.sh
#
# Steps: 1) download & split  2) regenerate answers with the target (vLLM)
#        3) estimate the cache size, then build the target cache (one worker per GPU).
# The cache is large (tens of TB at full scale): read the estimate it prints first.
#
# Step 2 resumes an interrupted run (--resume). Every regenerated row records the model that
# wrote it, so after changing MODEL step 2 refuses to add the new model's answers to the old
# ones: set REGEN_OUT to a new file, or OVERWRITE=1 to regenerate the old file from scratch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
VLLM_PY="${DEEPSPEC_VLLM_PYTHON:-$ROOT/.venv-vllm/bin/python}"
[ -x "$VLLM_PY" ] || VLLM_PY="$PY"

export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0,1,2,3,4,5,6,7}"
MODEL="${MODEL:-Qwen/Qwen3-4B}"
CONFIG="${CONFIG:-config/dspark/dspark_qwen3_4b.py}"
DATASET="${DATASET:-mlabonne/open-perfectblend}"
DATA_DIR="${DATA_DIR:-$HOME/.cache/deepspec/train_data}"
CACHE_DIR="${CACHE_DIR:-$HOME/.cache/deepspec/target_cache/$(basename "$MODEL")}"
SAMPLE_SIZE="${SAMPLE_SIZE:-}"          # empty = the whole dataset
MAX_TOKENS="${MAX_TOKENS:-4096}"
TEMPERATURE="${TEMPERATURE:-0.6}"
REGEN_OUT="${REGEN_OUT:-$DATA_DIR/train_regen.jsonl}"
OVERWRITE="${OVERWRITE:-0}"             # 1 = start the regenerated file over instead of resuming it
case "$OVERWRITE" in 0) AGAIN=--resume ;; 1) AGAIN=--overwrite ;;
  *) echo "prepare_data.sh: error: OVERWRITE must be 0 or 1, got '$OVERWRITE'" >&2; exit 2 ;; esac

# Preflight: the config, the target, writable output folders and (with SAMPLE_SIZE) free disk for the
# cache, checked before step 1 so a missing piece stops the run in its first seconds.
echo "==> preflight"
preflight=(--config "$CONFIG" --opts "model.target_model_name_or_path=$MODEL" --target "$MODEL"
           --output "$DATA_DIR" --output "$(dirname "$REGEN_OUT")" --output "$CACHE_DIR")
if [ -n "$SAMPLE_SIZE" ]; then  # tokens per sample at most: the answer budget plus a prompt allowance
  preflight+=(--cache-dir "$CACHE_DIR" --cache-samples "$SAMPLE_SIZE" --cache-tokens "$((MAX_TOKENS + 1024))")
fi
"$PY" -m deepspec.preflight "${preflight[@]}"
[ -n "$SAMPLE_SIZE" ] || echo "[preflight] cache size: checked in step 3, once the data is measured (set SAMPLE_SIZE to check it now)"

mkdir -p "$DATA_DIR"
echo "==> 1/3 download and split $DATASET"
"$PY" scripts/data/download_and_split.py --dataset-name "$DATASET" ${SAMPLE_SIZE:+--sample-size "$SAMPLE_SIZE"} \
  --train-output-path "$DATA_DIR/train.jsonl" --test-output-dir "$DATA_DIR" --test-output-name heldout --skip-existing

echo "==> 2/3 regenerate answers with $MODEL"
rc=0
"$VLLM_PY" scripts/data/generate_train_data.py --model "$MODEL" \
  --input-file-path "$DATA_DIR/train.jsonl" --output-file-path "$REGEN_OUT" \
  --max-tokens "$MAX_TOKENS" --temperature "$TEMPERATURE" --disable-thinking "$AGAIN" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "prepare_data.sh: step 2 failed (exit $rc). If the message says another model wrote $REGEN_OUT," \
       "rerun with REGEN_OUT=<new file> or OVERWRITE=1." >&2
  exit "$rc"
fi

echo "==> 3/3 target cache into $CACHE_DIR"
"$PY" scripts/data/prepare_target_cache.py --config "$CONFIG" --opts "model.target_model_name_or_path=$MODEL" \
  --train-data-path "$REGEN_OUT" --output-dir "$CACHE_DIR" "$@"
