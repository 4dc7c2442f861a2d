#!/usr/bin/env bash
# The test command (README, .ci/run): sets up the environment (scripts/env.sh), lints (ruff check,
# ruff format --check), sets up vLLM's environment (scripts/data/setup_vllm_env.sh) for the
# vllm-marked tests, then runs pytest from the repository root.
#
#   bash scripts/test.sh [pytest arguments]
#
# Extra arguments go to pytest; a test file or folder that exists from the folder you run the script
# from is given to pytest as an absolute path. pytest's own options: python -m pytest --help.
# Environment: CI (when set, a vLLM environment that cannot be installed fails the run).
#
# Examples:
#   bash scripts/test.sh                   # everything, as CI runs it
#   bash scripts/test.sh -k config -x      # extra arguments go to pytest
source "$(dirname "${BASH_SOURCE[0]}")/cli.sh"
if ds_wants_help "$@"; then ds_help "$0"; exit 0; fi
ds_no_dry_run
set -euo pipefail
args=()
for arg in "$@"; do  # tests/x.py, tests/x.py::name or a folder, named from the caller's folder
  if [[ "$arg" != -* && ( "$arg" == */* || "$arg" == *.py* ) ]]; then
    given="${arg%%::*}"
    ds_abs path "$given"
    if [ -e "$path" ]; then arg="$path${arg:${#given}}"; fi
  fi
  args+=("$arg")
done
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
echo "[test] environment ready after ${SECONDS}s"
# Lint and layout first (config in pyproject.toml [tool.ruff]); `ruff format .` fixes the layout.
ruff check . || { echo "[test] ruff check failed: fix the lines above (ruff check --fix . fixes some)" >&2; exit 1; }
ruff format --check . || { echo "[test] files need formatting: run ruff format ." >&2; exit 1; }
# vLLM (own venv, .venv-vllm) for the vllm-marked tests; once it is installed they must run, not skip.
if bash scripts/data/setup_vllm_env.sh; then export DEEPSPEC_REQUIRE_VLLM=1; elif [ -n "${CI:-}" ]; then exit 1; fi
echo "[test] lint and vLLM environment done after ${SECONDS}s; pytest:"
python -m pytest -q "${args[@]}"
