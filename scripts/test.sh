#!/usr/bin/env bash
# The test command (README, .ci/run): installs what it needs, then runs pytest.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k config -x
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
echo "[test] environment ready after ${SECONDS}s"
# Lint and layout first (config in pyproject.toml [tool.ruff]); `ruff format .` fixes the layout.
ruff check . || { echo "[test] ruff check failed: fix the lines above (ruff check --fix . fixes some)" >&2; exit 1; }
ruff format --check . || { echo "[test] files need formatting: run ruff format ." >&2; exit 1; }
# vLLM (own venv, .venv-vllm) for the vllm-marked tests; once it is installed they must run, not skip.
if bash scripts/data/setup_vllm_env.sh; then export DEEPSPEC_REQUIRE_VLLM=1; elif [ -n "${CI:-}" ]; then exit 1; fi
echo "[test] lint and vLLM environment done after ${SECONDS}s; pytest:"
python -m pytest -q "$@"
