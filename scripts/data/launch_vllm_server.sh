#!/usr/bin/env bash
# Start one vLLM OpenAI-compatible server per visible GPU (one on a CPU-only machine),
# wait until every one answers, print the --server-address flags for
# generate_train_data.py --backend openai, and keep running until stopped
# (Ctrl-C or SIGTERM); the servers stop with this script.
#
#   bash scripts/data/launch_vllm_server.sh --model Qwen/Qwen3-4B [--port 8000] [-- EXTRA vLLM ARGS]
#
# Options:
#   --model M                 model folder or hub name to serve (required)
#   --host H                  address to listen on (default: 127.0.0.1, this machine only)
#   --port P                  port of the first server; server i listens on P+i (default: 8000)
#   --num-servers N           servers to start (default: visible GPUs / tensor parallel size; 1 on CPU)
#   --tensor-parallel-size T  GPUs per server (default: 1)
#   --log-dir D               server logs, vllm_server_<i>.log (default: <repo>/logs)
#   --wait-timeout S          seconds to wait for start-up before giving up (default: 900)
#   --address-file F          also write the --server-address flags to F once all servers answer
#   -- ...                    everything after -- goes to vllm.entrypoints.openai.api_server
#
# Security: the servers listen on 127.0.0.1 (this machine only) unless --host says otherwise. To
# require a key, start them with `-- --api-key KEY` (a vLLM option; or set VLLM_API_KEY) and pass
# the same key to generate_train_data.py with --api-key-env VAR (or --api-key KEY); that script
# never sends $OPENAI_API_KEY to these servers. Listening on another address without a key lets
# anyone who can reach the port use the GPUs, so a warning is printed then.
#
# Environment: DEEPSPEC_VLLM_PYTHON (interpreter with vLLM; default <repo>/.venv-vllm/bin/python,
# made by scripts/data/setup_vllm_env.sh), CUDA_VISIBLE_DEVICES (which GPUs),
# VLLM_CPU_KVCACHE_SPACE (CPU KV cache GiB, default here 1).
source "$(dirname "${BASH_SOURCE[0]}")/../cli.sh"
if ds_wants_help "$@"; then ds_help "$0"; exit 0; fi
ds_no_dry_run
set -euo pipefail
set +m  # no job control: each background server must keep the pid that setsid gives it

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
die() { ds_die "$@"; }
need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }

MODEL="" HOST="127.0.0.1" PORT=8000 NUM_SERVERS="" TP=1 LOG_DIR="$ROOT/logs" WAIT_TIMEOUT=900 ADDRESS_FILE=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) need "$@"; MODEL="$2"; shift 2 ;;
    --host) need "$@"; HOST="$2"; shift 2 ;;
    --port) need "$@"; PORT="$2"; shift 2 ;;
    --num-servers) need "$@"; NUM_SERVERS="$2"; shift 2 ;;
    --tensor-parallel-size) need "$@"; TP="$2"; shift 2 ;;
    --log-dir) need "$@"; LOG_DIR="$2"; shift 2 ;;
    --wait-timeout) need "$@"; WAIT_TIMEOUT="$2"; shift 2 ;;
    --address-file) need "$@"; ADDRESS_FILE="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option '$1' (see --help; vLLM's own options go after --)" ;;
  esac
done
[ -n "$MODEL" ] || die "--model is required (a model folder or hub name)"
for n in "$PORT" "$TP" "$WAIT_TIMEOUT"; do [[ "$n" =~ ^[0-9]+$ ]] || die "'$n' is not a number"; done
[ "$TP" -ge 1 ] || die "--tensor-parallel-size must be >= 1, got $TP"
{ [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ]; } || die "--port must be in 1..65535, got $PORT"
[ -z "$NUM_SERVERS" ] || [[ "$NUM_SERVERS" =~ ^[1-9][0-9]*$ ]] || die "--num-servers must be a positive number"
[ $((PORT + ${NUM_SERVERS:-1} - 1)) -le 65535 ] || die "ports $PORT.. for ${NUM_SERVERS:-1} servers pass 65535; lower --port"
HAS_KEY=0
[ -n "${VLLM_API_KEY:-}" ] && HAS_KEY=1
for a in "${EXTRA[@]}"; do case "$a" in --api-key|--api-key=*) HAS_KEY=1 ;; esac; done
case "$HOST" in
  127.*|localhost|::1|"[::1]") ;;
  *) [ "$HAS_KEY" = 1 ] || echo "[launch] WARNING: listening on $HOST without an API key: anyone who can reach" \
       "this machine can use the servers. Keep the default --host 127.0.0.1, or add -- --api-key KEY" >&2 ;;
esac

PY="${DEEPSPEC_VLLM_PYTHON:-$ROOT/.venv-vllm/bin/python}"
[ -x "$PY" ] || die "no vLLM interpreter at $PY; run 'bash scripts/data/setup_vllm_env.sh' or set DEEPSPEC_VLLM_PYTHON"

# Which GPUs: CUDA_VISIBLE_DEVICES when set, else every GPU nvidia-smi lists, else none (CPU).
GPUS=()
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=',' read -r -a GPUS <<< "$CUDA_VISIBLE_DEVICES"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  mapfile -t GPUS < <(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ')
fi
if [ "${#GPUS[@]}" -gt 0 ]; then
  MAX_SERVERS=$(( ${#GPUS[@]} / TP ))
  [ "$MAX_SERVERS" -ge 1 ] || die "--tensor-parallel-size $TP needs $TP GPUs, ${#GPUS[@]} visible"
  NUM_SERVERS="${NUM_SERVERS:-$MAX_SERVERS}"
  [ "$NUM_SERVERS" -le "$MAX_SERVERS" ] || die "$NUM_SERVERS servers x $TP GPUs > ${#GPUS[@]} visible GPUs"
else
  NUM_SERVERS="${NUM_SERVERS:-1}"
  # vLLM's CPU backend otherwise reserves a large share of RAM for the KV cache.
  export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
fi
[[ "$NUM_SERVERS" =~ ^[1-9][0-9]*$ ]] || die "--num-servers must be a positive number"

# Probe on loopback when listening on every interface.
PROBE_HOST="$HOST"
case "$HOST" in 0.0.0.0|"::"|"[::]") PROBE_HOST=127.0.0.1 ;; esac

port_free() {
  "$PY" - "$1" "$2" <<'EOF'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
with socket.socket(family, socket.SOCK_STREAM) as s:
    try:
        s.bind((host.strip("[]"), port))
    except OSError:
        sys.exit(1)
EOF
}

answers() {  # does http://$PROBE_HOST:$1/v1/models answer? (401: up, and wants the key it was given)
  if command -v curl >/dev/null 2>&1; then
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' --noproxy '*' -m 5 "http://$PROBE_HOST:$1/v1/models" 2>/dev/null)"
    [ "$code" = 200 ] || [ "$code" = 401 ]
  else
    "$PY" - "http://$PROBE_HOST:$1/v1/models" >/dev/null 2>&1 <<'EOF'
import sys, urllib.error, urllib.request as u
try:
    u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=5)
except urllib.error.HTTPError as e:
    sys.exit(0 if e.code == 401 else 1)
EOF
  fi
}

PIDS=()
cleanup() {
  trap - EXIT INT TERM
  [ "${#PIDS[@]}" -gt 0 ] || return 0
  echo "[launch] stopping ${#PIDS[@]} server(s)" >&2
  # Each server runs in its own process group (setsid), so its engine processes stop with it.
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    alive=0
    for pid in "${PIDS[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break
    sleep 1
  done
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$LOG_DIR"
ADDRESSES=()
for ((i = 0; i < NUM_SERVERS; i++)); do
  port=$((PORT + i))
  port_free "$HOST" "$port" || die "port $port on $HOST is in use; pick another --port (server $i uses --port + $i)"
  log="$LOG_DIR/vllm_server_$i.log"
  args=(-m vllm.entrypoints.openai.api_server --model "$MODEL" --host "$HOST" --port "$port"
        --tensor-parallel-size "$TP")
  if [ "${#GPUS[@]}" -gt 0 ]; then
    devices="$(IFS=','; echo "${GPUS[*]:$((i * TP)):$TP}")"
  else
    devices=""
    args+=(--enforce-eager)  # the CPU backend has no CUDA graphs to capture
  fi
  # `python -m ...api_server`, not `vllm serve`: the console script fails under the vllm-cpu package name.
  if [ -n "$devices" ]; then
    CUDA_VISIBLE_DEVICES="$devices" setsid "$PY" "${args[@]}" "${EXTRA[@]}" >"$log" 2>&1 < /dev/null &
  else
    setsid "$PY" "${args[@]}" "${EXTRA[@]}" >"$log" 2>&1 < /dev/null &
  fi
  PIDS+=($!)
  ADDRESSES+=("$PROBE_HOST:$port")
  echo "[launch] server $i pid $! on $HOST:$port (${devices:+GPU $devices}${devices:-CPU}), log $log"
done

echo "[launch] waiting for ${NUM_SERVERS} server(s) to answer /v1/models (at most ${WAIT_TIMEOUT}s)"
start=$SECONDS
for ((i = 0; i < NUM_SERVERS; i++)); do
  port=$((PORT + i))
  until answers "$port"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      echo "[launch] server $i exited during start-up; last lines of $LOG_DIR/vllm_server_$i.log:" >&2
      tail -n 25 "$LOG_DIR/vllm_server_$i.log" >&2 || true
      exit 1
    fi
    if [ $((SECONDS - start)) -ge "$WAIT_TIMEOUT" ]; then
      echo "[launch] server $i did not answer within ${WAIT_TIMEOUT}s (raise --wait-timeout?); see $LOG_DIR/vllm_server_$i.log" >&2
      exit 1
    fi
    sleep 2
  done
done

FLAGS=""
for a in "${ADDRESSES[@]}"; do FLAGS+="--server-address $a "; done
FLAGS="${FLAGS% }"
if [ -n "$ADDRESS_FILE" ]; then
  tmp="$ADDRESS_FILE.tmp.$$"
  echo "$FLAGS" > "$tmp" && mv "$tmp" "$ADDRESS_FILE"
fi
echo "[launch] ready after $((SECONDS - start))s: $FLAGS"
echo "[launch] e.g. python scripts/data/generate_train_data.py --backend openai $FLAGS --input-file-path ... --output-file-path ..."
echo "[launch] Ctrl-C (or SIGTERM to pid $$) stops all servers"

# Stay up until stopped; if a server dies on its own, stop the rest and say so.
set +e
wait -n "${PIDS[@]}"
code=$?
echo "[launch] a server exited (code $code); see $LOG_DIR/vllm_server_*.log" >&2
exit 1
