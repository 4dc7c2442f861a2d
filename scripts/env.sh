#!/usr/bin/env bash
# Sourced by the entry scripts (train.sh, eval.sh, quickstart.sh, test.sh, bench/gpu_check.sh): create
# or reuse the virtual environment, install what requirements.txt asks for (again only when it
# changed), put it first on PATH and change to the repository root.
#
#   source scripts/env.sh          # in a script; `bash scripts/env.sh` only sets the environment up
#
# Environment (relative paths mean the folder the script was run from; made absolute before the cd):
#   DEEPSPEC_VENV           where the environment lives (default: <repo>/.venv)
#   DEEPSPEC_PYTHON         the interpreter that creates it (default: python3)
#   DEEPSPEC_VLLM_VENV, DEEPSPEC_VLLM_PYTHON, DEEPSPEC_TINY_TARGET, DEEPSPEC_EVAL_DATA_DIR
#                           other folders the scripts and tools read (made absolute here, nothing else)
#   DEEPSPEC_DRY_RUN=1      install nothing; the calling script prints its commands instead of running them
source "$(dirname "${BASH_SOURCE[0]}")/cli.sh"
if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run, not sourced
  if ds_wants_help "$@"; then ds_help "$0"; exit 0; fi
  [ $# -eq 0 ] || ds_die "takes no arguments, got '$1' (see bash scripts/env.sh --help)"
fi
set -euo pipefail
DEEPSPEC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for _var in DEEPSPEC_VENV DEEPSPEC_VLLM_VENV DEEPSPEC_VLLM_PYTHON DEEPSPEC_TINY_TARGET DEEPSPEC_EVAL_DATA_DIR; do
  if [ -n "${!_var:-}" ]; then ds_abs "$_var" "${!_var}"; export "${_var?}"; fi
done
if [[ "${DEEPSPEC_PYTHON:-}" == */* ]]; then ds_abs DEEPSPEC_PYTHON "$DEEPSPEC_PYTHON"; fi
DEEPSPEC_VENV="${DEEPSPEC_VENV:-$DEEPSPEC_ROOT/.venv}"
if [ "${DEEPSPEC_DRY_RUN:-0}" != 1 ]; then
  if [ ! -x "$DEEPSPEC_VENV/bin/python" ]; then
    echo "[deepspec] creating virtual environment $DEEPSPEC_VENV"
    "${DEEPSPEC_PYTHON:-python3}" -m venv "$DEEPSPEC_VENV"
  fi
  _want="$(cat "$DEEPSPEC_ROOT/requirements.txt" "$DEEPSPEC_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
  _stamp="$DEEPSPEC_VENV/.deepspec-installed"
  if [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
    echo "[deepspec] installing requirements into $DEEPSPEC_VENV (first run takes about a minute)"
    "$DEEPSPEC_VENV/bin/python" -m pip install -q --upgrade pip
    "$DEEPSPEC_VENV/bin/python" -m pip install -q -r "$DEEPSPEC_ROOT/requirements.txt"
    "$DEEPSPEC_VENV/bin/python" -m pip install -q --no-deps -e "$DEEPSPEC_ROOT"
    echo "$_want" > "$_stamp"
  fi
fi
export PATH="$DEEPSPEC_VENV/bin:$PATH"
# Benchmark prompts: eval_datasets/ in the checkout (DEEPSPEC_EVAL_DATA_DIR, when a user sets it).
# No hub traffic unless a user asks for a hub model explicitly.
export HF_HUB_DISABLE_TELEMETRY=1
ds_run cd "$DEEPSPEC_ROOT"
