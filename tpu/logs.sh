#!/usr/bin/env bash
# Stream or tail the log of a run started by tpu/launch.sh, from one worker or all of them.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/logs.sh --name NAME --zone ZONE --run-name RUN [options]

Show ~/REMOTE_DIR/logs/RUN/HOSTNAME.log, the log tpu/launch.sh makes each worker write. By default
it follows worker 0 (process 0, the one that prints metrics) until Ctrl-C; --worker all prints every
worker's lines prefixed with its hostname (interleaved).

Required:
  --name NAME        TPU (node) name.
  --zone ZONE        Zone of the TPU.
  --run-name RUN     The --run-name given to tpu/launch.sh (`--list` shows the runs).

Options:
  --project PROJECT  GCP project (default: gcloud's configured project).
  --worker W         Worker index (default 0) or all.
  --remote-dir DIR   Checkout on the workers, relative to $HOME (default: gadjax).
  --lines N          Start with the last N lines (default 100).
  --no-follow        Print the last N lines and exit instead of following the log.
  --list             List the runs on the worker(s) and exit (no --run-name needed).
  --dry-run          Print the gcloud command instead of running it.
  -h, --help         Show this help.
EOF
}

NAME="" ZONE="" PROJECT="" RUN_NAME="" WORKER=0 REMOTE_DIR=$GADJAX_REMOTE_DIR_DEFAULT LINES=100 FOLLOW=1 LIST=0

normalize_args "$@"
set -- "${ARGS[@]}"
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --zone) need_value "$@"; ZONE=$2; shift 2 ;;
    --project) need_value "$@"; PROJECT=$2; shift 2 ;;
    --run-name) need_value "$@"; RUN_NAME=$2; shift 2 ;;
    --worker) need_value "$@"; WORKER=$2; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR=$2; shift 2 ;;
    --lines) need_value "$@"; LINES=$2; shift 2 ;;
    --no-follow) FOLLOW=0; shift ;;
    --list) LIST=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1'" ;;
  esac
done

require_set --name "$NAME"
require_set --zone "$ZONE"
validate_name --name "$NAME"
validate_zone --zone "$ZONE"
validate_worker --worker "$WORKER"
validate_uint --lines "$LINES"
[[ $REMOTE_DIR =~ ^[A-Za-z0-9._][A-Za-z0-9._/-]*$ && $REMOTE_DIR != *..* ]] \
  || die "--remote-dir '$REMOTE_DIR' must be a relative path without '..' (it lives under \$HOME)"
if [[ $LIST == 0 ]]; then
  require_set --run-name "$RUN_NAME"
  [[ $RUN_NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] \
    || die "--run-name '$RUN_NAME' must be letters, digits, '.', '_' and '-'"
fi

require_gcloud
gcloud_scope "$ZONE" "$PROJECT"
if [[ $LIST == 1 ]]; then
  REMOTE="ls -1t ~/$REMOTE_DIR/logs 2>/dev/null | sed \"s/^/[\$(hostname)] /\" || true"
else
  LOG="\$HOME/$REMOTE_DIR/logs/$RUN_NAME/\$(hostname).log"
  TAIL="tail -n $LINES"
  [[ $FOLLOW == 1 ]] && TAIL+=" -F"
  REMOTE="test -e $LOG || { echo \"[\$(hostname)] no log $LOG\"; exit 1; }; $TAIL $LOG"
  if [[ $WORKER == all ]]; then
    # Prefix each line with the host; sed -u keeps followed lines flowing.
    REMOTE+=" | sed -u \"s/^/[\$(hostname)] /\""
  fi
fi
[[ $DRY_RUN == 1 ]] && printf '# remote script (runs on worker(s) %s):\n%s\n' "$WORKER" "$REMOTE"
run gcloud compute tpus tpu-vm ssh "$NAME" "${SCOPE[@]}" "--worker=$WORKER" "--command=$(remote_bash_command "$REMOTE")"
