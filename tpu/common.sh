# shellcheck shell=bash
# Shared helpers for the tpu/ scripts. Sourced, never run: it only defines functions and variables.
#
# Conventions every script follows:
#   * flags are `--flag VALUE` or `--flag=VALUE` (normalize_args splits the second form);
#   * --dry-run prints each gcloud command (shell-quoted) instead of running it;
#   * errors go to stderr and exit with status 2 (usage) or gcloud's status (runtime).

# Default remote checkout on every worker, relative to the worker user's home directory.
# shellcheck disable=SC2034  # read by the scripts that source this file
GADJAX_REMOTE_DIR_DEFAULT="gadjax"
DRY_RUN=0

die() {
  printf 'error: %s\n' "$*" >&2
  printf "Run '%s --help' for the flags.\n" "$(basename "$0")" >&2
  exit 2
}

log() {
  local dry=""
  [[ $DRY_RUN == 1 ]] && dry="(dry run) "
  printf '[%s] %s%s\n' "$(basename "$0" .sh)" "$dry" "$*" >&2
}

# normalize_args ARGS... -> the global array ARGS, with every --flag=value split into --flag value
# (up to a literal `--`; what follows it is a command and stays as given).
normalize_args() {
  ARGS=()
  local a rest=0
  for a in "$@"; do
    [[ $a == -- ]] && rest=1
    if [[ $rest == 0 && $a == --*=* ]]; then
      ARGS+=("${a%%=*}" "${a#*=}")
    else
      ARGS+=("$a")
    fi
  done
}

# need_value "$@" inside the parse loop: the flag at $1 must be followed by a value (not a flag).
need_value() {
  if [[ $# -lt 2 || -z $2 || $2 == --* ]]; then
    die "$1 needs a value"
  fi
}

require_set() {
  # require_set FLAG VALUE: a required flag was not given.
  [[ -n $2 ]] || die "$1 is required"
}

validate_name() {
  # GCP resource names: lowercase letter first, then lowercase letters, digits, hyphens; <= 63.
  local flag=$1 v=$2
  [[ $v =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] \
    || die "$flag '$v' must be 1-63 lowercase letters, digits or hyphens, starting with a letter"
}

validate_zone() {
  [[ $2 =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "$1 '$2' is not a zone like us-east5-a"
}

validate_uint() {
  [[ $2 =~ ^[0-9]+$ ]] || die "$1 '$2' must be a non-negative integer"
}

validate_worker() {
  # --worker: "all" or a worker index.
  [[ $2 == all || $2 =~ ^[0-9]+$ ]] || die "$1 '$2' must be 'all' or a worker index (0, 1, ...)"
}

validate_env_name() {
  [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "$1 '$2' is not an environment variable name"
}

# Print a command shell-quoted, as it would be typed.
quote_cmd() {
  local out="" a
  for a in "$@"; do
    out+="$(printf '%q' "$a") "
  done
  printf '%s\n' "${out% }"
}

# run CMD...: run it, or with --dry-run only print it (on stdout, so tests and users can read it).
run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '+ %s\n' "$(quote_cmd "$@")"
  else
    printf '+ %s\n' "$(quote_cmd "$@")" >&2
    "$@"
  fi
}

require_gcloud() {
  [[ $DRY_RUN == 1 ]] && return 0
  command -v gcloud >/dev/null 2>&1 \
    || die "gcloud not found; install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
}

# gcloud_scope ZONE PROJECT -> the global array SCOPE (--zone=..., and --project=... when set).
gcloud_scope() {
  SCOPE=("--zone=$1")
  if [[ -n $2 ]]; then
    SCOPE+=("--project=$2")
  fi
}

# The directory of the repository these scripts live in.
repo_root() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd
}

# remote_bash_command SCRIPT -> a --command string that runs SCRIPT with bash on the worker, whatever
# the login shell is and however SCRIPT is quoted (it travels base64-encoded). It holds only what
# SCRIPT holds: never put secret values in SCRIPT.
remote_bash_command() {
  local b64
  b64=$(printf '%s\n' "$1" | base64 | tr -d '\n')
  # shellcheck disable=SC2016  # $(...) is for the worker's shell to expand
  # bash -c (not `| bash`) so that the script's commands keep ssh's stdin instead of eating the script.
  printf 'bash -c "$(echo %s | base64 -d)"' "$b64"
}
