# Sourced by the entry scripts: create or reuse the virtual environment and
# install what requirements.txt asks for (again only when it changed).
#   DEEPSPEC_VENV   where the environment lives (default: <repo>/.venv)
#   DEEPSPEC_PYTHON the interpreter that creates it (default: python3)
set -euo pipefail
DEEPSPEC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEEPSPEC_VENV="${DEEPSPEC_VENV:-$DEEPSPEC_ROOT/.venv}"
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
export PATH="$DEEPSPEC_VENV/bin:$PATH"
# Benchmark prompts: eval_datasets/ in the checkout (DEEPSPEC_EVAL_DATA_DIR, when a user sets it).
# No hub traffic unless a user asks for a hub model explicitly.
export HF_HUB_DISABLE_TELEMETRY=1
cd "$DEEPSPEC_ROOT"
