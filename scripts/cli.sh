#!/usr/bin/env bash
# Helpers for the entry scripts, sourced first (before env.sh). Functions only: sourcing this creates
# no environment, writes no file and changes no folder, so --help, dry runs and argument errors come
# before any work.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../cli.sh"   # first line of scripts/<stage>/<name>.sh
#   if ds_wants_help "$@"; then ds_help "$0"; exit 0; fi
#
#   ds_wants_help ARG...    true when -h or --help is among ARG... (up to a --)
#   ds_help FILE            print FILE's header comment: its --help text
#   ds_die MESSAGE          "<script>: error: MESSAGE" on stderr, exit 2
#   ds_abs VAR PATH         VAR = PATH made absolute against the folder the script was run from
#   ds_abs_model VAR NAME   the same for a local model / data set; a hub id (owner/name) stays as it is
#   ds_abs_config VAR PATH  the same for a config file; one not in that folder but shipped in the
#                           repository (config/dspark/...) is the repository's
#   ds_closest NAME CAND... the candidates nearest NAME, for "did you mean" messages
#   ds_setting NAME DEFAULT [ALIAS...]
#                           NAME from a NAME=value argument (ds_set), else $NAME, else the first
#                           old spelling set in the environment, else DEFAULT; DS_FROM[NAME] says which
#   ds_say MESSAGE          echo MESSAGE (with DEEPSPEC_DRY_RUN=1 as a '# ' comment line)
#   ds_run CMD...           run CMD; with DEEPSPEC_DRY_RUN=1 print it (shell-quoted) instead
#   ds_exec CMD...          exec CMD; with DEEPSPEC_DRY_RUN=1 print it and exit 0
#   ds_no_dry_run           refuse DEEPSPEC_DRY_RUN=1 (a script that has no dry run)
#
# DEEPSPEC_DRY_RUN=1: train.sh, eval.sh and prepare_data.sh print the commands they would run (one per
# line, shell-quoted), set nothing up and write nothing; the other scripts refuse it.

if [ -n "${DS_CLI_LOADED:-}" ] && [ "${BASH_SOURCE[0]}" != "$0" ]; then return 0; fi  # sourced twice
DS_CLI_LOADED=1
DS_TOOL="${DS_TOOL:-$(basename "$0")}"
DS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"  # the repository
DS_CALLER_DIR="$PWD"  # the folder the user ran the script from: relative paths they give mean this folder

ds_wants_help() {
  local arg
  for arg in "$@"; do
    case "$arg" in
      --) return 1 ;;
      -h | --help) return 0 ;;
    esac
  done
  return 1
}

ds_help() {  # the comment block after the shebang line, '# ' stripped
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$1"
}

ds_die() {
  echo "$DS_TOOL: error: $*" >&2
  exit 2
}

ds_abs() {  # ds_abs VAR PATH: '~' expanded, relative to DS_CALLER_DIR, './' and '//' folded ('..' kept)
  local _p="$2"
  if [ -n "$_p" ]; then
    case "$_p" in
      "~") _p="$HOME" ;;
      "~/"*) _p="$HOME/${_p#"~/"}" ;;
    esac
    [[ "$_p" == /* ]] || _p="$DS_CALLER_DIR/$_p"
    while [[ "$_p" == *//* ]]; do _p="${_p//\/\//\/}"; done
    while [[ "$_p" == */./* ]]; do _p="${_p//\/.\//\/}"; done
    [ "$_p" = "/." ] || _p="${_p%/.}"
  fi
  printf -v "$1" '%s' "$_p"
}

# owner/name as the hub spells it (deepspec/hub.py): letters, digits, '-', '_', '.'; no '--' or '..'.
DS_HUB_PART='[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9_])?'
DS_HUB_ID="^$DS_HUB_PART/$DS_HUB_PART\$"

ds_abs_model() {  # ds_abs_model VAR NAME: the local-or-hub rule of deepspec/hub.py, seen from the caller
  local _v="$2" _abs
  ds_abs _abs "$_v"
  if [ -n "$_v" ] && [ ! -e "$_abs" ] && [ ! -L "$_abs" ] && [[ "$_v" =~ $DS_HUB_ID ]] \
    && [[ "$_v" != *--* && "$_v" != *..* ]] && [ "${#_v}" -le 96 ] && [ ! -d "$DS_CALLER_DIR/${_v%%/*}" ] \
    && [[ "$_v" != *.jsonl && "$_v" != *.json && "$_v" != *.parquet ]]; then
    _abs="$_v"  # a hub id: nothing local by that name
  fi
  printf -v "$1" '%s' "$_abs"
}

ds_abs_config() {
  local _c
  ds_abs _c "$2"
  if [ ! -e "$_c" ] && [[ "$2" != /* && "$2" != "~"* ]] && [ -e "$DS_ROOT/$2" ]; then
    ds_abs _c "$DS_ROOT/$2"
  fi
  printf -v "$1" '%s' "$_c"
}

ds_distance() {  # edit distance between $1 and $2, into DS_DISTANCE
  local a="$1" b="$2" i j d cost
  local -a prev cur
  for ((j = 0; j <= ${#b}; j++)); do prev[j]=$j; done
  for ((i = 1; i <= ${#a}; i++)); do
    cur=([0]=$i)
    for ((j = 1; j <= ${#b}; j++)); do
      cost=1
      [ "${a:i-1:1}" != "${b:j-1:1}" ] || cost=0
      d=$((prev[j] + 1))
      ((cur[j - 1] + 1 >= d)) || d=$((cur[j - 1] + 1))
      ((prev[j - 1] + cost >= d)) || d=$((prev[j - 1] + cost))
      cur[j]=$d
    done
    prev=("${cur[@]}")
  done
  DS_DISTANCE=${prev[${#b}]}
}

ds_closest() {  # ds_closest NAME CAND...: up to three candidates near NAME ("a, b or c"), else empty
  local name="$1" cand best=() line longer
  shift
  local -a scored=()
  for cand in "$@"; do
    ds_distance "$name" "$cand"
    longer=$((${#name} > ${#cand} ? ${#name} : ${#cand}))
    if ((DS_DISTANCE <= 1 || DS_DISTANCE * 5 <= longer * 2)) || [[ "$cand" == *"$name"* && ${#name} -ge 3 ]] \
      || [[ "$name" == *"$cand"* && ${#cand} -ge 3 ]]; then
      scored+=("$(printf '%03d %s' "$DS_DISTANCE" "$cand")")
    fi
  done
  [ "${#scored[@]}" -gt 0 ] || return 0
  while IFS= read -r line; do best+=("${line#* }"); done < <(printf '%s\n' "${scored[@]}" | sort | head -n 3)
  case "${#best[@]}" in
    1) echo "${best[0]}" ;;
    2) echo "${best[0]} or ${best[1]}" ;;
    *) echo "${best[0]}, ${best[1]} or ${best[2]}" ;;
  esac
}

declare -A DS_FROM=()  # NAME -> the spelling that gave its value ('' = the default)
declare -A DS_ARG=()   # NAME -> the value a NAME=value argument gave

ds_set() {  # ds_set NAME VALUE SPELLING: a value given on the command line (the last one wins)
  DS_ARG[$1]="$2"
  DS_FROM[$1]="$3"
}

ds_setting() {
  local _name="$1" _default="$2" _alias
  shift 2
  if [ -n "${DS_ARG[$_name]+set}" ]; then
    printf -v "$_name" '%s' "${DS_ARG[$_name]}"
    return 0
  fi
  if [ -n "${!_name:-}" ]; then
    DS_FROM[$_name]="$_name"
    return 0
  fi
  for _alias in "$@"; do
    if [ -n "${!_alias:-}" ]; then
      printf -v "$_name" '%s' "${!_alias}"
      DS_FROM[$_name]="$_alias"
      return 0
    fi
  done
  printf -v "$_name" '%s' "$_default"
  DS_FROM[$_name]=""
}

ds_show() {  # one shell-quoted command line
  local line
  line="$(printf '%q ' "$@")"
  echo "${line% }"
}

ds_say() {
  if [ "${DEEPSPEC_DRY_RUN:-0}" = 1 ]; then echo "# $*"; else echo "$*"; fi
}

ds_run() {
  if [ "${DEEPSPEC_DRY_RUN:-0}" = 1 ]; then
    ds_show "$@"
  else
    "$@"
  fi
}

ds_exec() {
  if [ "${DEEPSPEC_DRY_RUN:-0}" = 1 ]; then
    ds_show "$@"
    exit 0
  fi
  exec "$@"
}

ds_no_dry_run() {
  if [ "${DEEPSPEC_DRY_RUN:-0}" = 1 ]; then
    ds_die "has no dry run (DEEPSPEC_DRY_RUN=1 is for train.sh, eval.sh and prepare_data.sh); unset it"
  fi
}

# Sourced with the script's arguments still in "$@": a bad DEEPSPEC_DRY_RUN is refused unless --help.
case "${DEEPSPEC_DRY_RUN:-0}" in
  0 | 1 | "") ;;
  *)
    if ! ds_wants_help "$@"; then
      echo "$DS_TOOL: error: DEEPSPEC_DRY_RUN must be 0 or 1, got '$DEEPSPEC_DRY_RUN'" >&2
      exit 2
    fi
    ;;
esac

if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run, not sourced: say what this file is
  ds_help "$0"
  exit 0
fi
