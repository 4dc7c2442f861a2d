#!/usr/bin/env bash
# The main job on the embedded default: the tiny local target, end to end, on CPU.
#
#   bash scripts/quickstart.sh [--fast] [--online] [--output-dir DIR] [--num-prompts N] [--train-steps N] [--eval-prompts N] [--seeds N] [--ablations] [eval_temperature=T]
#
# First a preflight (python -m deepspec.preflight) checks what every stage needs and stops at once if
# something is missing. Stages (each reused when already finished, so a re-run picks up where it stopped):
#   1. build (or reuse) the tiny target            scripts/data/build_tiny_target.py
#   2. training prompts from held-out stdlib code  python -m deepspec.data.local_prompts
#   3. regenerate the answers with the target      scripts/data/generate_train_data.py, in vLLM
#      (.venv-vllm, set up by scripts/data/setup_vllm_env.sh); transformers only where vLLM cannot be
#      installed, or with DEEPSPEC_REGEN_BACKEND=hf
#   4. target cache                                scripts/data/prepare_target_cache.py
#   5. train DSpark, DFlash and Eagle3 (equal budgets, 2 gloo workers)   train.py
#   6. evaluate each by speculative decoding on the benchmark prompts    eval.py
#      (eval_datasets/, the five shipped tasks; the four others when fetched), plus the target
#      drafting for itself (the ceiling check: τ must be γ+1)
#   7. one table + plots in $OUT (results.json, table.md, tau_by_task.png, ...)  scripts/eval/compare.py
#      every τ with its 95% interval (a bootstrap over prompts), the draft's cost per round, and the paired
#      difference of DSpark over each other draft ("not resolved" where the interval contains 0)
#   --seeds N: stages 5 and 6 for N seeds per algorithm (seed 1 is the configs' own; seed k > 1 trains
#   with seed=k-1 into checkpoints/<algo>_s<k-1> and samples with eval.py --seed k-1); the table gives the
#   mean over seeds ± their spread, and the interval
#   --ablations: also DSpark with 1/2 draft layers (paper Fig. 3) and block size 4/8/12/16 with the
#   Markov head, the RNN head and DFlash (Fig. 4), same budget: $OUT/ablations.md, depth.png, block_size.png
#   --online: no stage 4; the drafts train with the target running live (train.py --online) into
#   $OUT/checkpoints/<algo>_online, their table goes to $OUT/online/; an offline run in the same $OUT
#   (a plain quickstart before or after) is printed next to it
#
# Options: --output-dir DIR (default runs/quickstart, --fast: runs/quickstart-fast; a relative DIR means the
# folder you run the script from), --num-prompts N, --train-steps N (per draft), --eval-prompts N (per task),
# --seeds N (per algorithm, default 1).
# Variable, as an argument or in the environment: eval_temperature=1 (0: evaluate greedily; a temperature
# other than 1 keeps its evaluations and table in $OUT/t<T>/, e.g. t0/, next to those at 1, and reuses the
# trained drafts).
# Environment: DEEPSPEC_TINY_TARGET=DIR (a tiny target you built, used as it is),
# DEEPSPEC_REGEN_BACKEND=hf (regenerate with transformers instead of vLLM).
#
# Examples:
#   bash scripts/quickstart.sh --fast                      # a few minutes, every stage
#   bash scripts/quickstart.sh --output-dir myrun eval_temperature=0
#   bash scripts/quickstart.sh --seeds 3                   # three seeds per algorithm: about 3x stages 5-6
source "$(dirname "${BASH_SOURCE[0]}")/cli.sh"
if ds_wants_help "$@"; then ds_help "$0"; exit 0; fi
ds_no_dry_run
set -euo pipefail
FAST=0; ABLATIONS=0; ONLINE=0
OUT=""; SET_PROMPTS=""; SET_STEPS=""; SET_EVAL=""; SEEDS=1
value() {  # value FLAG [VALUE...]: the value after FLAG, or a refusal
  [ $# -ge 2 ] || ds_die "$1 needs a value (see --help)"
  case "$1" in
    --output-dir | --out) ds_abs OUT "$2" ;;
    *) [[ "$2" =~ ^[1-9][0-9]*$ ]] || ds_die "$1 needs a whole number >= 1, got '$2'" ;;
  esac
}
while [ $# -gt 0 ]; do
  case "$1" in
    --fast) FAST=1 ;;
    --output-dir | --out) value "$@"; shift ;;  # --out: the older spelling
    --num-prompts) value "$@"; SET_PROMPTS="$2"; shift ;;
    --train-steps) value "$@"; SET_STEPS="$2"; shift ;;
    --eval-prompts) value "$@"; SET_EVAL="$2"; shift ;;
    --seeds) value "$@"; SEEDS="$2"; shift ;;
    --ablations) ABLATIONS=1 ;;
    --online) ONLINE=1 ;;
    eval_temperature=* | eval-temperature=* | EVAL_TEMPERATURE=*) ds_set eval_temperature "${1#*=}" "${1%%=*}" ;;
    *=*)
      near="$(ds_closest "${1%%=*}" eval_temperature)"
      ds_die "unknown name '${1%%=*}'${near:+ (closest: $near)}; see --help" ;;
    *) ds_die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
if [ "$ONLINE" = 1 ] && [ "$ABLATIONS" = 1 ]; then
  ds_die "--ablations trains from the target cache; run it without --online"
fi
ds_setting eval_temperature 1 EVAL_TEMPERATURE
[[ "$eval_temperature" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] \
  || ds_die "${DS_FROM[eval_temperature]:-eval_temperature} must be a number >= 0, got '$eval_temperature'"
DEEPSPEC_TINY_TARGET_GIVEN="${DEEPSPEC_TINY_TARGET:-}"
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ "$FAST" = 1 ]; then
  OUT="${OUT:-runs/quickstart-fast}"
  TARGET="${DEEPSPEC_TINY_TARGET:-$OUT/tiny_target}"; TARGET_BUDGET=(--steps 60); NUM_PROMPTS=24; MAX_TOKENS=48; TRAIN_STEPS=6
  EVAL_PROMPTS=1; EVAL_TOKENS=16; SELF_TASKS="gsm8k:1"; ABLATION_STEPS=3
else
  OUT="${OUT:-runs/quickstart}"
  TARGET="${DEEPSPEC_TINY_TARGET:-$HOME/.cache/deepspec/tiny_target}"; TARGET_BUDGET=(); NUM_PROMPTS=256; MAX_TOKENS=128; TRAIN_STEPS=60
  EVAL_PROMPTS=4; EVAL_TOKENS=64; SELF_TASKS="gsm8k:2,humaneval:2,mt-bench:2"; ABLATION_STEPS=""
fi
NUM_PROMPTS="${SET_PROMPTS:-$NUM_PROMPTS}"; TRAIN_STEPS="${SET_STEPS:-$TRAIN_STEPS}"; EVAL_PROMPTS="${SET_EVAL:-$EVAL_PROMPTS}"
ABLATION_STEPS="${ABLATION_STEPS:-$TRAIN_STEPS}"
if [ "$FAST" = 1 ]; then
  EVAL_TASKS="gsm8k:$EVAL_PROMPTS,humaneval:$EVAL_PROMPTS,mt-bench:$EVAL_PROMPTS"
else
  EVAL_TASKS=$(printf "%s:$EVAL_PROMPTS," gsm8k math500 aime25 humaneval mbpp livecodebench mt-bench alpaca arena-hard-v2)
  EVAL_TASKS="${EVAL_TASKS%,}"
fi
# Sampling at temperature 1, like eval.py's default: DSpark's L1 loss and confidence head target the
# acceptance of *sampled* drafts; greedy (eval_temperature=0) measures argmax agreement instead.
EVAL_TEMPERATURE="$eval_temperature"
case "$EVAL_TEMPERATURE" in  # where evaluations and tables go: $OUT at temperature 1, $OUT/t<T> otherwise
  1 | 1. | 1.0 | 1.00) RESULTS="$OUT" ;;
  *) RESULTS="$OUT/t$EVAL_TEMPERATURE" ;;
esac
export DEEPSPEC_TINY_TARGET="$TARGET"

# Preflight: every input a later stage needs (prompt files, the target, writable output folders, free
# disk for the target cache), checked before the first stage; a missing piece stops the run here.
PREFLIGHT=(--tasks "$EVAL_TASKS" --tasks "$SELF_TASKS" --output-dir "$OUT" --target "$TARGET" --tiny-target)
if [ "$ONLINE" != 1 ]; then
  PREFLIGHT+=(--config config/dspark/dspark_tiny.py --cache-dir "$OUT/cache" --cache-samples "$NUM_PROMPTS"
              --cache-tokens "$((MAX_TOKENS + 512))")
fi
echo "==> preflight"
python -m deepspec.preflight "${PREFLIGHT[@]}"
mkdir -p "$OUT"

declare -a TIMINGS=()
stage() {  # stage NAME COMMAND...: run, time, remember
  local name="$1"; shift
  echo; echo "==> $name"
  local t0=$SECONDS
  "$@"
  TIMINGS+=("$(printf '%-28s %5ds' "$name" $((SECONDS - t0)))")
}

# A DEEPSPEC_TINY_TARGET you built is used as it is (whatever its budget), never rebuilt over.
if [ -n "${DEEPSPEC_TINY_TARGET_GIVEN:-}" ] && python -c 'import sys; from deepspec.tiny_target import is_complete_tiny_target as ok; sys.exit(not ok(folder=sys.argv[1]))' "$TARGET"; then
  echo; echo "==> tiny target: using $TARGET (DEEPSPEC_TINY_TARGET)"
else
  stage "tiny target" python scripts/data/build_tiny_target.py --output-dir "$TARGET" "${TARGET_BUDGET[@]}"
fi
if [ ! -s "$OUT/data/prompts.jsonl" ]; then
  stage "training prompts" python -m deepspec.data.local_prompts --output-file-path "$OUT/data/prompts.jsonl" --num-samples "$NUM_PROMPTS"
fi
# Regeneration runs in vLLM (its own environment, .venv-vllm), as data preparation does on a GPU node;
# only where vLLM cannot be installed does it fall back to transformers, and says so.
REGEN=(python scripts/data/generate_train_data.py --backend hf)
setup_vllm() {
  mkdir -p "$OUT/logs"
  if bash scripts/data/setup_vllm_env.sh >"$OUT/logs/setup_vllm_env.log" 2>&1; then
    REGEN=(env VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}" VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-ERROR}"
           "${DEEPSPEC_VLLM_VENV:-.venv-vllm}/bin/python"
           scripts/data/generate_train_data.py --backend vllm)
    tail -n 1 "$OUT/logs/setup_vllm_env.log"
  else
    echo "[quickstart] vLLM could not be installed here (log: $OUT/logs/setup_vllm_env.log); regenerating with transformers instead"
  fi
}
rows() { if [ -s "$1" ]; then grep -c . "$1" || true; else echo 0; fi; }  # non-blank lines of a file
# Answered already, by this target (a target rebuilt since is newer: the run below then refuses to mix).
# Conversations that failed (listed in train_regen_error.jsonl) count as done: retrying them here would
# change the data the target cache and the drafts were built from, and the cache would refuse to mix.
REGEN_FAILED="$(rows "$OUT/data/train_regen_error.jsonl")"
if [ "$(( $(rows "$OUT/data/train_regen.jsonl") + REGEN_FAILED ))" -ge "$(rows "$OUT/data/prompts.jsonl")" ] \
   && [ "$OUT/data/train_regen.jsonl" -nt "$TARGET/config.json" ]; then
  echo; echo "==> regenerate answers: reusing $OUT/data/train_regen.jsonl (every prompt answered or failed)"
  if [ "$REGEN_FAILED" -gt 0 ]; then
    echo "    $REGEN_FAILED failed, listed in $OUT/data/train_regen_error.jsonl; to retry them, use a new --output-dir"
  fi
else
  if [ "${DEEPSPEC_REGEN_BACKEND:-vllm}" = vllm ]; then stage "vLLM environment" setup_vllm; fi
  stage "regenerate answers" "${REGEN[@]}" --model "$TARGET" \
    --input-file-path "$OUT/data/prompts.jsonl" --output-file-path "$OUT/data/train_regen.jsonl" \
    --max-tokens "$MAX_TOKENS" --temperature 0.7 --seed 0 --resume
fi
if [ "$ONLINE" = 1 ]; then
  # Online: the same conversations, tokenised the same way; the target runs inside each training step.
  SUFFIX="_online"; SOURCE=(--online --train-data-path "$OUT/data/train_regen.jsonl")
else
  SUFFIX=""; SOURCE=(--target-cache-dir "$OUT/cache")
  stage "target cache" python scripts/data/prepare_target_cache.py --config config/dspark/dspark_tiny.py \
    --train-data-path "$OUT/data/train_regen.jsonl" --output-dir "$OUT/cache"
fi

train() {  # train NAME CONFIG STEPS [OPTS...]: one draft into $OUT/checkpoints/NAME (resumes / reuses)
  local name="$1" config="$2" steps="$3"; shift 3
  stage "train $name" python train.py --config "$config" "${SOURCE[@]}" \
    --nproc 2 --no-progress --opts "train.max_train_steps=$steps" "logging.checkpointing_steps=$steps" \
    "logging.logging_steps=1" "logging.checkpoint_dir=$OUT/checkpoints/$name" \
    "logging.tensorboard_dir=$OUT/tensorboard/$name" "$@"
}
seeded() {  # seeded NAME K: the run name of seed K (0: NAME itself, the configs' own seed)
  if [ "$2" = 0 ]; then echo "$1"; else echo "$1_s$2"; fi
}
for ((k = 0; k < SEEDS; k++)); do
  for algo in dspark dflash eagle3; do
    # Same data, same steps and batch for all three: only the algorithm (and the seed) differs.
    seed_opt=(); [ "$k" = 0 ] || seed_opt=("seed=$k")
    train "$(seeded "$algo$SUFFIX" "$k")" "config/$algo/${algo}_tiny.py" "$TRAIN_STEPS" "${seed_opt[@]}"
  done
done

echo; echo "==> training summary (first -> last logged step)"
python - "$OUT" "$SUFFIX" "$SEEDS" <<'PY'
import json, sys, pathlib
for seed in range(int(sys.argv[3])):
    for algo in ("dspark", "dflash", "eagle3"):
        name = algo + sys.argv[2] + (f"_s{seed}" if seed else "")
        rows = [json.loads(l) for l in (pathlib.Path(sys.argv[1]) / "checkpoints" / name / "metrics.jsonl").read_text().splitlines() if l.strip()]
        first, last = rows[0], rows[-1]
        extra = "".join(f", {k} {first[k]:.3f} -> {last[k]:.3f}" for k in ("tau_probabilistic", "accuracy@0") if k in last)
        if "target_forward_s" in last and sys.argv[2]:
            extra += f", target forward {sum(r['target_forward_s'] for r in rows):.1f} s in all"
        print(f"  {name:14s} steps {last['step']:4d}: loss {first['loss']:.3f} -> {last['loss']:.3f}{extra}")
PY

evaluate() {  # evaluate NAME EVAL_ARGS...: reuse a finished evaluation of the same checkpoint and settings
  local name="$1"; shift
  # step_latest is a symlink and -nt follows it: results must be newer than the newest step_N folder
  # (its mtime is when its files were written); no checkpoint dir (self-draft): -nt is true.
  local dir="$RESULTS/eval/$name" settings="$* --max-new-tokens $EVAL_TOKENS --temperature $EVAL_TEMPERATURE"
  if [ -s "$dir/results.json" ] && [ "$dir/results.json" -nt "$OUT/checkpoints/$name/step_latest" ] \
     && [ "$(cat "$dir/settings.txt" 2>/dev/null)" = "$settings" ]; then
    echo "==> eval $name: reusing $dir"; return
  fi
  stage "eval $name" python eval.py --output-dir "$dir" --max-new-tokens "$EVAL_TOKENS" \
    --temperature "$EVAL_TEMPERATURE" "$@"
  echo "$settings" > "$dir/settings.txt"
}
for ((k = 0; k < SEEDS; k++)); do
  for algo in dspark dflash eagle3; do
    name="$(seeded "$algo$SUFFIX" "$k")"
    evaluate "$name" --draft_name_or_path "$OUT/checkpoints/$name" --tasks "$EVAL_TASKS" --seed "$k"
  done
done
evaluate self7 --self-draft 7 --tasks "$SELF_TASKS" --seed 0

seed_dirs() {  # seed_dirs NAME: the eval folders of NAME's seeds, comma-separated
  local k dirs="$RESULTS/eval/$1"
  for ((k = 1; k < SEEDS; k++)); do dirs+=",$RESULTS/eval/$1_s$k"; done
  echo "$dirs"
}
table() {  # table SUFFIX OUTPUT_DIR LABEL
  echo; echo "==> the paper's Table 1 in miniature, $3 (macro τ per domain; temperature $EVAL_TEMPERATURE, $EVAL_TOKENS new tokens per prompt, $SEEDS seed(s))"
  python scripts/eval/compare.py --runs dspark="$(seed_dirs "dspark$1")" dflash="$(seed_dirs "dflash$1")" \
    eagle3="$(seed_dirs "eagle3$1")" --ceiling "$RESULTS/eval/self7" --output-dir "$2"
}
if [ "$ONLINE" = 1 ]; then
  table _online "$RESULTS/online" "trained online"
  if [ -s "$RESULTS/eval/dspark/results.json" ] && [ -s "$RESULTS/eval/dflash/results.json" ] && [ -s "$RESULTS/eval/eagle3/results.json" ]; then
    table "" "$RESULTS" "trained offline from the cache (the earlier run in $OUT)"
  fi
else
  table "" "$RESULTS" "trained offline from the cache"
  if [ -s "$RESULTS/online/table.md" ]; then
    echo; echo "==> the same, trained online (the earlier --online run in $OUT): $RESULTS/online/table.md"; cat "$RESULTS/online/table.md"
  fi
fi

if [ "$ABLATIONS" = 1 ]; then
  # Paper Fig. 3 (draft depth; 5 layers is the main DSpark run) and Fig. 4 (block size x head type).
  for layers in 1 2; do
    train "dspark_L$layers" config/dspark/dspark_tiny.py "$ABLATION_STEPS" "model.num_draft_layers=$layers"
    evaluate "dspark_L$layers" --draft_name_or_path "$OUT/checkpoints/dspark_L$layers" --tasks "$EVAL_TASKS"
  done
  for block in 4 8 12 16; do
    train "markov_b$block" config/dspark/dspark_tiny.py "$ABLATION_STEPS" "model.block_size=$block"
    train "rnn_b$block" config/dspark/dspark_tiny.py "$ABLATION_STEPS" "model.block_size=$block" "model.markov_head_type=rnn"
    train "dflash_b$block" config/dflash/dflash_tiny.py "$ABLATION_STEPS" "model.block_size=$block"
    for name in "markov_b$block" "rnn_b$block" "dflash_b$block"; do
      evaluate "$name" --draft_name_or_path "$OUT/checkpoints/$name" --tasks "$EVAL_TASKS"
    done
  done
  echo; echo "==> ablations"
  python scripts/eval/plot_ablations.py --output-dir "$RESULTS"
fi

echo; echo "==> done: outputs in $OUT"
printf '  %s\n' "${TIMINGS[@]}"
