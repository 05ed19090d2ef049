#!/usr/bin/env bash
# Run the same command on every worker of a TPU slice, detached, with one log file per worker.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/launch.sh --name NAME --zone ZONE [options] -- COMMAND [ARGS...]

Start COMMAND on every worker at once (`gcloud compute tpus tpu-vm ssh --worker=all`), from the
checkout tpu/setup.sh made (~/REMOTE_DIR, its .venv activated), detached from the ssh session (nohup +
setsid, or a tmux session with --tmux). Each worker writes ~/REMOTE_DIR/logs/RUN/HOSTNAME.log; read them
with tpu/logs.sh. On a TPU slice gadjax finds the other workers by itself (jax.distributed
auto-detection), so the command is the same on every worker:

  tpu/launch.sh --name gad-v5p --zone us-east5-a --run-name v5p-gad --key-env TEACHER_API_KEY \
      --key-secret teacher-api-key -- python -m gadjax.train --config configs/v5p.py

Required:
  --name NAME              TPU (node) name.
  --zone ZONE              Zone of the TPU.
  -- COMMAND [ARGS...]     The command, after a literal `--`.

Options:
  --project PROJECT        GCP project (default: gcloud's configured project).
  --worker W               all (default; a pod slice needs every worker) or one worker index.
  --remote-dir DIR         Checkout on the workers, relative to $HOME (default: gadjax).
  --run-name RUN           Name of this run: its log directory and tmux session (default:
                           run-YYYYmmdd-HHMMSS). Letters, digits, '.', '_' and '-'.
  --env NAME=VALUE         Export a NON-secret variable for the command (repeatable), e.g.
                           --env LIBTPU_INIT_ARGS=... or, off TPU, GADJAX_COORDINATOR=host:port.
                           Names that look secret (KEY, TOKEN, SECRET, PASSWORD) are refused: values
                           given here appear on command lines and in the run script on disk.
  --key-env NAME           Name of the environment variable the trainer reads the teacher API key from
                           (the config's api-key variable, e.g. TEACHER_API_KEY). Only this NAME
                           travels; the value is read on each worker, from --key-secret or --key-file.
  --key-secret SECRET      Read the key on each worker from Google Secret Manager:
                           `gcloud secrets versions access latest --secret=SECRET`, with the TPU VM's
                           service account (it needs roles/secretmanager.secretAccessor).
  --key-file PATH          Read the key on each worker from PATH (default with --key-env and no
                           --key-secret: ~/.gadjax/secrets/NAME). The file must have mode 600 or 400.
  --push-key               Before launching, copy the value of the LOCAL environment variable named
                           by --key-env to the key file on every worker (directory 700, file 600),
                           through scp, never on a command line.
  --tmux                   Run in a detached tmux session gadjax-RUN (attach on a worker with
                           `tmux attach -t gadjax-RUN`) instead of nohup.
  --stop                   Stop the run RUN on the workers (SIGTERM to its process group) instead of
                           starting one; no COMMAND needed. The trainer finishes its step, saves a
                           checkpoint and exits 75; a stopped run is not restarted.
  --max-restarts N         When COMMAND exits 75 (gadjax.train: stopped by SIGTERM/SIGINT after saving
                           a checkpoint, e.g. a preemption notice) and the run was not --stop'ped,
                           run it again with --config.resume=true, at most N times (default 3; 0 = never).
  --dry-run                Print the gcloud commands and the scripts that would run on the workers.
  -h, --help               Show this help.
EOF
}

NAME="" ZONE="" PROJECT="" WORKER=all REMOTE_DIR=$GADJAX_REMOTE_DIR_DEFAULT RUN_NAME="" KEY_ENV=""
KEY_SECRET="" KEY_FILE="" PUSH_KEY=0 USE_TMUX=0 STOP=0 MAX_RESTARTS=3
ENVS=()
CMD=()

normalize_args "$@"
set -- "${ARGS[@]}"
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --zone) need_value "$@"; ZONE=$2; shift 2 ;;
    --project) need_value "$@"; PROJECT=$2; shift 2 ;;
    --worker) need_value "$@"; WORKER=$2; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR=$2; shift 2 ;;
    --run-name) need_value "$@"; RUN_NAME=$2; shift 2 ;;
    --env) need_value "$@"; ENVS+=("$2"); shift 2 ;;
    --key-env) need_value "$@"; KEY_ENV=$2; shift 2 ;;
    --key-secret) need_value "$@"; KEY_SECRET=$2; shift 2 ;;
    --key-file) need_value "$@"; KEY_FILE=$2; shift 2 ;;
    --push-key) PUSH_KEY=1; shift ;;
    --tmux) USE_TMUX=1; shift ;;
    --stop) STOP=1; shift ;;
    --max-restarts) need_value "$@"; MAX_RESTARTS=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; CMD=("$@"); break ;;
    *) die "unknown argument '$1' (put the command after a literal --)" ;;
  esac
done
require_set --name "$NAME"
require_set --zone "$ZONE"
validate_name --name "$NAME"
validate_zone --zone "$ZONE"
validate_worker --worker "$WORKER"
[[ $REMOTE_DIR =~ ^[A-Za-z0-9._][A-Za-z0-9._/-]*$ && $REMOTE_DIR != *..* ]] \
  || die "--remote-dir '$REMOTE_DIR' must be a relative path without '..' (it lives under \$HOME)"
if [[ -z $RUN_NAME ]]; then
  [[ $STOP == 1 ]] && die "--stop needs --run-name"
  RUN_NAME="run-$(date +%Y%m%d-%H%M%S)"
fi
[[ $RUN_NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] \
  || die "--run-name '$RUN_NAME' must be letters, digits, '.', '_' and '-'"
if [[ $STOP == 0 && ${#CMD[@]} -eq 0 ]]; then
  die "no command: put it after --, e.g. -- python -m gadjax.train --config configs/v5p.py"
fi
[[ $STOP == 1 && ${#CMD[@]} -gt 0 ]] && die "--stop takes no command"
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "--max-restarts '$MAX_RESTARTS' must be a non-negative integer"
for kv in "${ENVS[@]}"; do
  [[ $kv == *=* ]] || die "--env '$kv' must be NAME=VALUE"
  validate_env_name --env "${kv%%=*}"
  if [[ ${kv%%=*} =~ (KEY|TOKEN|SECRET|PASSWORD|PASSWD) ]]; then
    die "--env ${kv%%=*}=...: this looks like a secret; pass secrets with --key-env and --key-secret/--key-file"
  fi
done
if [[ -n $KEY_ENV ]]; then
  validate_env_name --key-env "$KEY_ENV"
else
  [[ -n $KEY_SECRET || -n $KEY_FILE || $PUSH_KEY == 1 ]] \
    && die "--key-secret, --key-file and --push-key need --key-env (the variable the trainer reads)"
fi
[[ -n $KEY_SECRET && -n $KEY_FILE ]] && die "--key-secret and --key-file are exclusive"
[[ -n $KEY_SECRET && $PUSH_KEY == 1 ]] && die "--push-key writes a key file; it does not go with --key-secret"
if [[ -n $KEY_SECRET && ! $KEY_SECRET =~ ^[A-Za-z0-9_-]+$ ]]; then
  die "--key-secret '$KEY_SECRET' is not a Secret Manager secret id"
fi
if [[ -n $KEY_ENV && -z $KEY_SECRET && -z $KEY_FILE ]]; then
  # shellcheck disable=SC2088  # the tilde is expanded on the worker, not here
  KEY_FILE="~/.gadjax/secrets/$KEY_ENV"
fi
if [[ -n $KEY_FILE && ! $KEY_FILE =~ ^(~/)?[A-Za-z0-9._/-]+$ ]]; then
  die "--key-file '$KEY_FILE' must be a plain path (letters, digits, . _ / -), optionally starting with ~/"
fi
if [[ $PUSH_KEY == 1 && $DRY_RUN == 0 && -z ${!KEY_ENV:-} ]]; then
  die "--push-key: the local environment variable $KEY_ENV is empty or unset"
fi

require_gcloud
gcloud_scope "$ZONE" "$PROJECT"
WORKERS=("--worker=$WORKER")
RUN_DIR="logs/$RUN_NAME"
# A remote path for the shell: ~/x stays unquoted so that the worker's shell expands it.
# shellcheck disable=SC2088  # the tilde is for the worker's shell
remote_path() {
  if [[ $1 == "~/"* ]]; then printf '~/%q' "${1#\~/}"; else printf '%q' "$1"; fi
}

ssh_all() {
  # ssh_all DESCRIPTION SCRIPT: run SCRIPT with bash on the selected workers.
  if [[ $DRY_RUN == 1 ]]; then
    printf '# %s (runs on worker(s) %s):\n%s\n' "$1" "$WORKER" "$2"
  fi
  run gcloud compute tpus tpu-vm ssh "$NAME" "${SCOPE[@]}" "${WORKERS[@]}" \
    "--command=$(remote_bash_command "$2")"
}

if [[ $STOP == 1 ]]; then
  ssh_all "stop" "$(cat <<EOF
cd ~/$REMOTE_DIR/$RUN_DIR 2>/dev/null || { echo "[gadjax launch] \$(hostname): no run $RUN_NAME"; exit 0; }
touch "\$(hostname).stop"  # the job's restart loop reads it: a stopped run stays stopped
tmux kill-session -t gadjax-$RUN_NAME 2>/dev/null || true
pid=\$(cat "\$(hostname).pid" 2>/dev/null || true)
if [ -n "\$pid" ] && kill -0 "\$pid" 2>/dev/null; then
  kill -TERM -- "-\$pid" 2>/dev/null || kill -TERM "\$pid"
  echo "[gadjax launch] \$(hostname): sent SIGTERM to \$pid"
else
  echo "[gadjax launch] \$(hostname): $RUN_NAME is not running"
fi
EOF
)"
  exit 0
fi

# The teacher key: pushed to a 0600 file on every worker, through a local 0600 temp file and scp.
if [[ $PUSH_KEY == 1 ]]; then
  key_dir=$(dirname "$KEY_FILE")
  ssh_all "prepare the key directory" "mkdir -p $(remote_path "$key_dir") && chmod 700 $(remote_path "$key_dir")"
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  # The value goes from this process's environment into a file only this user can read; with
  # --dry-run the file stays empty.
  if [[ $DRY_RUN == 1 ]]; then (umask 077 && : >"$TMP/key"); else (umask 077 && printf '%s' "${!KEY_ENV}" >"$TMP/key"); fi
  run gcloud compute tpus tpu-vm scp "$TMP/key" "$NAME:${KEY_FILE#\~/}" "${SCOPE[@]}" "${WORKERS[@]}"
  ssh_all "restrict the key file" "chmod 600 $(remote_path "$KEY_FILE")"
  rm -f "$TMP/key"
fi

# The job script each worker runs: it reads the key (never contains it) and execs COMMAND.
JOB="set -euo pipefail
cd ~/$REMOTE_DIR
source .venv/bin/activate
"
for kv in "${ENVS[@]}"; do
  JOB+="export ${kv%%=*}=$(printf '%q' "${kv#*=}")
"
done
if [[ -n $KEY_SECRET ]]; then
  JOB+="$KEY_ENV=\$(gcloud secrets versions access latest --secret=$KEY_SECRET)
export $KEY_ENV
"
elif [[ -n $KEY_FILE ]]; then
  kf=$(remote_path "$KEY_FILE")
  JOB+="mode=\$(stat -c %a $kf) || { echo '[gadjax launch] key file $KEY_FILE is missing (tpu/launch.sh --push-key writes it)'; exit 1; }
case \$mode in 600|400) ;; *) echo \"[gadjax launch] refusing key file $KEY_FILE with mode \$mode: chmod 600 it\"; exit 1 ;; esac
$KEY_ENV=\$(cat $kf)
export $KEY_ENV
"
fi
JOB+="echo \"[gadjax launch] host=\$(hostname) run=$RUN_NAME pid=\$\$ start=\$(date -Is)\"
echo \$\$ > ~/$REMOTE_DIR/$RUN_DIR/\$(hostname).pid
echo $(printf '%q' "[gadjax launch] command: $(quote_cmd "${CMD[@]}")")
# Exit 75 = the trainer saved a checkpoint at a step boundary on SIGTERM/SIGINT: resume it, unless
# tpu/launch.sh --stop asked for the stop (it leaves HOSTNAME.stop in the run directory).
restarts=0 resume=()
while :; do
  rc=0
  $(quote_cmd "${CMD[@]}") \"\${resume[@]}\" || rc=\$?
  if [ \"\$rc\" -ne 75 ] || [ -e ~/$REMOTE_DIR/$RUN_DIR/\$(hostname).stop ] || [ \"\$restarts\" -ge $MAX_RESTARTS ]; then
    echo \"[gadjax launch] exit \$rc at \$(date -Is) after \$restarts restart(s)\"
    exit \"\$rc\"
  fi
  restarts=\$((restarts + 1)) resume=(--config.resume=true)
  echo \"[gadjax launch] stopped with a checkpoint (exit 75): restart \$restarts of $MAX_RESTARTS with --config.resume=true\"
done"

JOB_FILE="$RUN_DIR/job.sh"
if [[ $USE_TMUX == 1 ]]; then
  START="command -v tmux >/dev/null || { echo '[gadjax launch] tmux is not installed on '\$(hostname); exit 1; }
tmux new-session -d -s gadjax-$RUN_NAME \"bash $JOB_FILE >> \$LOG 2>&1\""
else
  START="nohup setsid bash $JOB_FILE >> \"\$LOG\" 2>&1 < /dev/null &"
fi
LAUNCH="set -euo pipefail
cd ~/$REMOTE_DIR
[ -x .venv/bin/python ] || { echo \"[gadjax launch] \$(hostname): no ~/$REMOTE_DIR/.venv; run tpu/setup.sh first\"; exit 1; }
mkdir -p $RUN_DIR
LOG=$RUN_DIR/\$(hostname).log
cat > $JOB_FILE <<'GADJAX_JOB'
$JOB
GADJAX_JOB
$START
echo \"[gadjax launch] \$(hostname): started $RUN_NAME, log ~/$REMOTE_DIR/\$LOG\""

ssh_all "launch" "$LAUNCH"
log "launched $RUN_NAME; follow it with: tpu/logs.sh --name $NAME --zone $ZONE --run-name $RUN_NAME"
