#!/usr/bin/env bash
# Evaluate a draft by speculative decoding over the benchmark prompts (stage 3): sets up the
# environment (scripts/env.sh), then runs eval.py.
#
#   bash scripts/eval/eval.sh name=value ...
#
# Every eval.py option is a name=value argument (listed below; `_` or `-` in the name, a leading --
# and `--name value` all work too; an unknown name is refused before any work). Relative paths mean
# the folder you run the script from. On/off options take 1 or 0. target_name_or_path and
# draft_name_or_path are also read from the environment.
#
# Environment: CUDA_VISIBLE_DEVICES (one worker per visible GPU shards the prompts; default: all),
# DEEPSPEC_DRY_RUN=1 (print the eval.py command instead of running it).
#
# Examples:
#   bash scripts/eval/eval.sh draft_name_or_path=runs/quickstart/checkpoints/dspark tasks=gsm8k:20 temperature=0
#   bash scripts/eval/eval.sh self_draft=7 tasks=gsm8k:1 max_new_tokens=4 temperature=0
#   bash scripts/eval/eval.sh draft_name_or_path=my_draft confidence_threshold=0.5   # cut blocks at confidence < 0.5
#
# Names (default in brackets; python eval.py --help says more):
source "$(dirname "${BASH_SOURCE[0]}")/../cli.sh"

# name | eval.py's spelling | kind: value, path (a file or folder), model (local folder or hub id), switch
# (on/off) | what it sets [default]
OPTIONS='
target_name_or_path|--target_name_or_path|model|target model [the tiny local target: $DEEPSPEC_TINY_TARGET, else ~/.cache/deepspec/tiny_target]
draft_name_or_path|--draft_name_or_path|model|draft: a step_N folder, a checkpoint dir (its latest step) or a hub id [none: give it or self_draft]
self_draft|--self-draft|value|ceiling check: the target drafts GAMMA tokens for itself [default: 0]
num_speculative_tokens|--num-speculative-tokens|value|tokens drafted per round, at most what the draft was trained for [default: trained]
tasks|--tasks|value|name[:n],... (any <name>.jsonl in eval_data_dir is a task) [all nine with the paper'"'"'s counts]
eval_data_dir|--eval-data-dir|path|folder of <task>.jsonl prompt files [$DEEPSPEC_EVAL_DATA_DIR, else eval_datasets/]
max_new_tokens|--max-new-tokens|value|tokens generated per prompt [default: 2048]
temperature|--temperature|value|0 = greedy, exactly the target'"'"'s greedy output [default: 1.0]
confidence_threshold|--confidence-threshold|value|cut the block at the first slot with confidence < T; 0 = off [default: 0.0]
survival_threshold|--survival-threshold|value|verify the leading slots whose prefix survival >= T [none]
scheduler|--scheduler|value|fixed, threshold, cumulative-threshold or prefix [from the thresholds, else fixed]
engine_profile|--engine-profile|path|cost table JSON from scripts/eval/profile_engine.py (scheduler=prefix) [none]
async_scheduler|--async-scheduler|switch|prefix scheduler: budget from confidences two steps old [off]
no_calibration|--no-calibration|switch|ignore calibration.json next to the draft [off]
seed|--seed|value|random seed [default: 0]
bootstrap_draws|--bootstrap-draws|value|draws of the bootstrap over prompts behind every τ interval, at least 100 [default: 1000]
bootstrap_seed|--bootstrap-seed|value|seed of those draws [default: 0]
batch_size|--batch-size|value|requests decoded together [default: 1]
output_dir|--output-dir|path|results folder [runs/eval/<draft name> in the repository]
device|--device|value|cpu, cuda (one worker per visible GPU) or cuda:N [cuda when available, else cpu]
dtype|--dtype|value|auto, bf16, fp32 or fp16 (auto: bf16 on GPU; on CPU fp32 unless native bf16 decodes >= 1.5x faster in a probe) [default: auto]
save_outputs|--save-outputs|switch|also write outputs.jsonl [off]
no_progress|--no-progress|switch|no progress bars [off]
'
NAMES=()
declare -A FLAG=() KIND=() WHAT=()
while IFS='|' read -r name flag kind what; do
  [ -n "$name" ] || continue
  NAMES+=("$name")
  FLAG[$name]="$flag"
  KIND[$name]="$kind"
  WHAT[$name]="$what"
done <<< "$OPTIONS"

if ds_wants_help "$@"; then
  ds_help "$0"
  for name in "${NAMES[@]}"; do
    case "${KIND[$name]}" in switch) v=1 ;; path) v=PATH ;; model) v=NAME ;; *) v=VALUE ;; esac
    printf '  %-32s %s\n' "$name=$v" "${WHAT[$name]}"
  done
  exit 0
fi
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

declare -A VALUE=()
lookup() {  # lookup SPELLING: the name SPELLING means (leading --, '-' or '_'), or a one-line refusal
  local key="${1#-}"
  key="${key#-}"
  key="${key//-/_}"
  if [ -n "${FLAG[$key]+set}" ]; then
    name="$key"
    return 0
  fi
  local near
  near="$(ds_closest "$key" "${NAMES[@]}")"
  ds_die "unknown name '$1'${near:+ (closest: $near)}; every name: bash scripts/eval/eval.sh --help"
}
take() {  # take NAME VALUE SPELLING
  local value="$2"
  if [ "${KIND[$1]}" = switch ]; then
    case "${value,,}" in
      1 | true | yes | on) value=1 ;;
      0 | false | no | off) value=0 ;;
      *) ds_die "$3 is on or off: give 1 or 0, got '$2'" ;;
    esac
  elif [ -z "$value" ]; then
    ds_die "$3 needs a value (bash scripts/eval/eval.sh --help)"
  fi
  VALUE[$1]="$value"
}
if [ -n "${target_name_or_path:-}" ]; then VALUE[target_name_or_path]="$target_name_or_path"; fi
if [ -n "${draft_name_or_path:-}" ]; then VALUE[draft_name_or_path]="$draft_name_or_path"; fi
while [ $# -gt 0 ]; do
  arg="$1"
  shift
  case "$arg" in
    --opts) ;;  # DeepSpec's spelling: name=value pairs follow
    *=*)
      lookup "${arg%%=*}"
      take "$name" "${arg#*=}" "${arg%%=*}" ;;
    -*)
      lookup "$arg"
      if [ "${KIND[$name]}" = switch ]; then
        take "$name" 1 "$arg"
      else
        [ $# -gt 0 ] || ds_die "$arg needs a value (bash scripts/eval/eval.sh --help)"
        take "$name" "$1" "$arg"
        shift
      fi ;;
    *) ds_die "unexpected argument '$arg': give name=value (e.g. tasks=gsm8k:20); see --help" ;;
  esac
done

args=()
for name in "${NAMES[@]}"; do
  [ -n "${VALUE[$name]+set}" ] || continue
  value="${VALUE[$name]}"
  case "${KIND[$name]}" in
    switch) if [ "$value" = 1 ]; then args+=("${FLAG[$name]}"); fi; continue ;;
    path) ds_abs value "$value" ;;
    model) ds_abs_model value "$value" ;;
  esac
  args+=("${FLAG[$name]}" "$value")
done

source "$ROOT/scripts/env.sh"  # the virtualenv; cds to the repo root
ds_exec python eval.py "${args[@]}"
