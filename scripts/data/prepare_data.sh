#!/usr/bin/env bash
# Stage 1 end to end with the Qwen3-4B, 8-GPU defaults: 1) download & split the data set,
# 2) regenerate the answers with the target (vLLM), 3) estimate the cache size, then build the target
# cache (one worker per GPU). A preflight checks the config, the target and the output folders first.
# The cache is large (tens of TB at full scale): read the estimate it prints first.
#
#   bash scripts/data/prepare_data.sh [name=value ...] [prepare_target_cache.py flags]
#
# Variables, as name=value arguments or in the environment (relative paths mean the folder you run
# the script from):
#   model_path=Qwen/Qwen3-4B                     target: hub id or local folder
#   config_path=config/dspark/dspark_qwen3_4b.py training config (a config/... path that is not in
#                                                your folder is read from the repository)
#   dataset_name=mlabonne/open-perfectblend      hub data set, or a local file / folder
#   data_dir=~/.cache/deepspec/train_data        train.jsonl and heldout.jsonl (step 1)
#   train_data_path=<data_dir>/train_regen.jsonl the regenerated answers (step 2)
#   target_cache_dir=~/.cache/deepspec/target_cache/<model name>   the cache (step 3)
#   sample_size=                                 rows to keep (empty: the whole data set; set it to
#                                                check the cache's disk space in the preflight)
#   max_tokens=4096                              answer budget per conversation (step 2)
#   temperature=0.6                              sampling temperature (step 2)
#   overwrite=0                                  1: regenerate train_data_path from scratch instead of
#                                                resuming it
# Other arguments go to scripts/data/prepare_target_cache.py (step 3), e.g. --local-batch-size 16 or
# --opts data.max_length=2048.
#
# Step 2 resumes an interrupted run. Every regenerated row records the model that wrote it, so after
# changing model_path step 2 refuses to add the new model's answers to the old ones: set
# train_data_path to a new file, or overwrite=1 to regenerate the old file from scratch.
#
# Environment: PYTHON (default: python), DEEPSPEC_VLLM_PYTHON (vLLM's interpreter; default
# <repo>/.venv-vllm/bin/python, else PYTHON), CUDA_VISIBLE_DEVICES (default: 0-7),
# DEEPSPEC_DRY_RUN=1 (print the commands instead of running them).
#
# Examples:
#   bash scripts/data/prepare_data.sh
#   bash scripts/data/prepare_data.sh model_path=Qwen/Qwen3-8B config_path=config/dspark/dspark_qwen3_8b.py
#   bash scripts/data/prepare_data.sh dataset_name=mine.jsonl sample_size=1000 target_cache_dir=cache
source "$(dirname "${BASH_SOURCE[0]}")/../cli.sh"
if ds_wants_help "$@"; then ds_help "$0"; exit 0; fi
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# name -> its old spellings (still read from the environment or the command line, not shown above)
declare -A OLD=([model_path]=MODEL [config_path]=CONFIG [dataset_name]=DATASET [data_dir]=DATA_DIR
  [train_data_path]=REGEN_OUT [target_cache_dir]="CACHE_DIR cache_dir" [sample_size]=SAMPLE_SIZE
  [max_tokens]=MAX_TOKENS [temperature]=TEMPERATURE [overwrite]=OVERWRITE)
declare -A NAME_OF=()
for name in "${!OLD[@]}"; do
  NAME_OF[$name]=$name
  for old in ${OLD[$name]}; do NAME_OF[$old]=$name; done
done
# prepare_target_cache.py flags this script sets itself: given here, they set the variable instead
declare -A FLAG_VAR=([--config]=config_path [--output-dir]=target_cache_dir [--train-data-path]=train_data_path)

extra=()      # flags for prepare_target_cache.py
overrides=()  # config overrides (after --opts): to the preflight and prepare_target_cache.py
in_opts=0
while [ $# -gt 0 ]; do
  arg="$1"
  shift
  case "$arg" in
    --opts) in_opts=1; continue ;;
    --config | --output-dir | --train-data-path)
      [ $# -gt 0 ] || ds_die "$arg needs a value"
      ds_set "${FLAG_VAR[$arg]}" "$1" "$arg"
      shift ;;
    --config=* | --output-dir=* | --train-data-path=*) ds_set "${FLAG_VAR[${arg%%=*}]}" "${arg#*=}" "${arg%%=*}" ;;
    -*) extra+=("$arg") ;;
    *=*)
      key="${arg%%=*}"
      if [ "$in_opts" = 1 ]; then overrides+=("$arg"); continue; fi  # a config override after --opts
      name="${NAME_OF[${key//-/_}]:-}"
      if [ -z "$name" ]; then
        near="$(ds_closest "${key//-/_}" model_path config_path dataset_name data_dir train_data_path \
          target_cache_dir sample_size max_tokens temperature overwrite)"
        ds_die "unknown name '$key'${near:+ (closest: $near)}; config overrides go after --opts; see --help"
      fi
      ds_set "$name" "${arg#*=}" "$key" ;;
    *) extra+=("$arg") ;;  # a flag's value, e.g. the 16 of --local-batch-size 16
  esac
  in_opts=0
done

ds_setting model_path Qwen/Qwen3-4B MODEL
ds_setting config_path "" CONFIG
ds_setting dataset_name mlabonne/open-perfectblend DATASET
ds_setting data_dir "$HOME/.cache/deepspec/train_data" DATA_DIR
ds_setting target_cache_dir "" CACHE_DIR cache_dir
ds_setting sample_size "" SAMPLE_SIZE
ds_setting max_tokens 4096 MAX_TOKENS
ds_setting temperature 0.6 TEMPERATURE
ds_setting train_data_path "" REGEN_OUT
ds_setting overwrite 0 OVERWRITE
# What the message names: the spelling the user gave, else the variable's name.
said() { echo "${DS_FROM[$1]:-$1}"; }

# Paths the user gave mean their folder; the defaults live in the repository or under $HOME.
[ -z "${DS_FROM[model_path]}" ] || ds_abs_model model_path "$model_path"
[ -z "${DS_FROM[dataset_name]}" ] || ds_abs_model dataset_name "$dataset_name"
if [ -z "$config_path" ]; then
  config_path="$ROOT/config/dspark/dspark_qwen3_4b.py"
else
  ds_abs_config config_path "$config_path"
fi
ds_abs data_dir "$data_dir"
[ -n "$target_cache_dir" ] || target_cache_dir="$HOME/.cache/deepspec/target_cache/$(basename "$model_path")"
ds_abs target_cache_dir "$target_cache_dir"
[ -n "$train_data_path" ] || train_data_path="$data_dir/train_regen.jsonl"
ds_abs train_data_path "$train_data_path"

case "$overwrite" in
  0) again=--resume ;;
  1) again=--overwrite ;;
  *) ds_die "$(said overwrite) must be 0 or 1, got '$overwrite'" ;;
esac
[[ "$max_tokens" =~ ^[1-9][0-9]*$ ]] || ds_die "$(said max_tokens) must be a whole number >= 1, got '$max_tokens'"
[ -z "$sample_size" ] || [[ "$sample_size" =~ ^[1-9][0-9]*$ ]] \
  || ds_die "$(said sample_size) must be a whole number >= 1 (or empty for the whole data set), got '$sample_size'"
[[ "$temperature" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] \
  || ds_die "$(said temperature) must be a number >= 0, got '$temperature'"

PY="${PYTHON:-python}"
VLLM_PY="${DEEPSPEC_VLLM_PYTHON:-$ROOT/.venv-vllm/bin/python}"
if [[ "$PY" == */* ]]; then ds_abs PY "$PY"; fi
ds_abs VLLM_PY "$VLLM_PY"
[ -x "$VLLM_PY" ] || VLLM_PY="$PY"
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0,1,2,3,4,5,6,7}"
ds_run cd "$ROOT"

# Preflight: the config, the target, writable output folders and (with sample_size) free disk for the
# cache, checked before step 1 so a missing piece stops the run in its first seconds.
ds_say "==> preflight"
preflight=(--config "$config_path" --opts "model.target_model_name_or_path=$model_path" "${overrides[@]}"
  --target "$model_path"
  --output-dir "$data_dir" --output-dir "$(dirname "$train_data_path")" --output-dir "$target_cache_dir")
if [ -n "$sample_size" ]; then  # tokens per sample at most: the answer budget plus a prompt allowance
  preflight+=(--cache-dir "$target_cache_dir" --cache-samples "$sample_size" --cache-tokens "$((max_tokens + 1024))")
fi
ds_run "$PY" -m deepspec.preflight "${preflight[@]}"
[ -n "$sample_size" ] || ds_say "[preflight] cache size: checked in step 3, once the data is measured (set sample_size to check it now)"

ds_run mkdir -p "$data_dir"
ds_say "==> 1/3 download and split $dataset_name"
split=(--dataset-name "$dataset_name" --train-output-path "$data_dir/train.jsonl" --test-output-dir "$data_dir"
  --test-output-name heldout --skip-existing)
if [ -n "$sample_size" ]; then split+=(--sample-size "$sample_size"); fi
ds_run "$PY" scripts/data/download_and_split.py "${split[@]}"

ds_say "==> 2/3 regenerate answers with $model_path"
rc=0
ds_run "$VLLM_PY" scripts/data/generate_train_data.py --model "$model_path" \
  --input-file-path "$data_dir/train.jsonl" --output-file-path "$train_data_path" \
  --max-tokens "$max_tokens" --temperature "$temperature" --disable-thinking "$again" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "prepare_data.sh: step 2 failed (exit $rc). If the message says another model wrote $train_data_path," \
    "rerun with train_data_path=<new file> or overwrite=1." >&2
  exit "$rc"
fi

ds_say "==> 3/3 target cache into $target_cache_dir"
ds_run "$PY" scripts/data/prepare_target_cache.py --config "$config_path" \
  --opts "model.target_model_name_or_path=$model_path" "${overrides[@]}" \
  --train-data-path "$train_data_path" --output-dir "$target_cache_dir" "${extra[@]}"
