#!/usr/bin/env bash
# Train a draft model (stage 2): sets up the environment (scripts/env.sh), then runs train.py.
#
#   bash scripts/train/train.sh [name=value ...] [key.path=value ...] [train.py flags]
#
# Variables, as name=value arguments or in the environment (relative paths mean the folder you run
# the script from):
#   config_path=config/dspark/dspark_tiny.py   training config (a config/... path that is not in your
#                                              folder is read from the repository)
#   target_cache_dir=                          target cache folder (default: the config's
#                                              data.target_cache_path)
#   train_data_path=                           online mode instead (adds --online): a regenerated JSONL
#                                              file; repeat the argument for several files
# Other arguments: config overrides key.path=value, bare or after --opts (repeatable), and train.py
# flags (--nproc N, --device cpu|cuda, --stop-after-steps N, --no-progress; python train.py --help).
# DeepSpec's `bash scripts/train/train.sh CONFIG.py ...` (the config first) works too.
#
# Environment: CUDA_VISIBLE_DEVICES (GPUs, one worker each; default 0-7); multi-node: NODE_RANK,
# NNODES, MASTER_ADDR, MASTER_PORT (or start train.py with torchrun); DEEPSPEC_DRY_RUN=1 (print the
# train.py command instead of running it). In the environment, train_data_path is one file (an old
# space-separated list is still read as several files when each of them exists).
#
# Examples:
#   bash scripts/train/train.sh train.lr=3e-4 exp_name=try2
#   bash scripts/train/train.sh config_path=myconf.py target_cache_dir=cacheA --nproc 2
#   bash scripts/train/train.sh train_data_path=a.jsonl train_data_path="my data.jsonl"   # online
source "$(dirname "${BASH_SOURCE[0]}")/../cli.sh"
if ds_wants_help "$@"; then ds_help "$0"; exit 0; fi
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

data_paths=()  # train_data_path arguments, in order
flags=()       # for train.py
overrides=()   # key.path=value
first=1
while [ $# -gt 0 ]; do
  arg="$1"
  shift
  case "$arg" in
    --opts) ;;  # DeepSpec's spelling: the overrides follow
    --config | --target-cache-dir | --train-data-path)
      [ $# -gt 0 ] || ds_die "$arg needs a value"
      case "$arg" in
        --config) ds_set config_path "$1" "$arg" ;;
        --target-cache-dir) ds_set target_cache_dir "$1" "$arg" ;;
        *) data_paths+=("$1") ;;
      esac
      shift ;;
    --config=*) ds_set config_path "${arg#*=}" --config ;;
    --target-cache-dir=*) ds_set target_cache_dir "${arg#*=}" --target-cache-dir ;;
    --train-data-path=*) data_paths+=("${arg#*=}") ;;
    -*) flags+=("$arg") ;;  # a train.py flag (e.g. --nproc)
    *=*)
      key="${arg%%=*}"
      case "${key//-/_}" in
        config_path | target_cache_dir) ds_set "${key//-/_}" "${arg#*=}" "$key" ;;
        train_data_path) data_paths+=("${arg#*=}") ;;
        *) overrides+=("$arg") ;;  # key.path=value
      esac ;;
    *.py) if [ "$first" = 1 ]; then ds_set config_path "$arg" "$arg"; else flags+=("$arg"); fi ;;
    *) flags+=("$arg") ;;  # a flag's value (e.g. the 2 of --nproc 2)
  esac
  first=0
done

ds_setting config_path ""
ds_setting target_cache_dir ""
# Paths the user gave mean their folder (train.py runs in the repository root).
if [ -z "$config_path" ]; then
  config_path=config/dspark/dspark_tiny.py
else
  ds_abs_config config_path "$config_path"
fi
args=(--config "$config_path")
if [ -n "$target_cache_dir" ]; then
  ds_abs target_cache_dir "$target_cache_dir"
  args+=(--target-cache-dir "$target_cache_dir")
fi
if [ "${#data_paths[@]}" -eq 0 ] && [ -n "${train_data_path:-}" ]; then
  ds_abs whole "$train_data_path"
  data_paths=("$train_data_path")
  if [ ! -e "$whole" ] && [[ "$train_data_path" == *[[:space:]]* ]]; then
    read -r -a words <<< "$train_data_path"  # the old space-separated list: only when every file exists
    all=1
    for word in "${words[@]}"; do ds_abs file "$word"; [ -e "$file" ] || all=0; done
    if [ "$all" = 1 ]; then
      data_paths=("${words[@]}")
      echo "[train.sh] train_data_path: read as ${#words[@]} files; for several files repeat the argument:" \
        "train_data_path=FILE train_data_path=FILE" >&2
    fi
  fi
fi
if [ "${#data_paths[@]}" -gt 0 ]; then
  args+=(--online)
  for file in "${data_paths[@]}"; do
    [ -n "$file" ] || ds_die "train_data_path needs a file name (repeat train_data_path=FILE for several)"
    ds_abs file "$file"
    args+=(--train-data-path "$file")
  done
fi
args+=("${flags[@]}")
if [ "${#overrides[@]}" -gt 0 ]; then args+=(--opts "${overrides[@]}"); fi

export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0,1,2,3,4,5,6,7}"
source "$ROOT/scripts/env.sh"  # the virtualenv; cds to the repo root
ds_exec python train.py "${args[@]}"
