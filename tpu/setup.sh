#!/usr/bin/env bash
# Install gadjax (with the tpu extra) in a venv on every worker of a TPU VM / pod slice.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/setup.sh --name NAME --zone ZONE [options]

On every worker (--worker=all): put the gadjax source in ~/REMOTE_DIR, create a Python venv there
(REMOTE_DIR/.venv) and `pip install -e ".[tpu]"` into it (jax[tpu] brings libtpu), then check that
JAX sees the TPU chips. Run it again after changing code or configs: it updates in place.

The source comes from this checkout (default: the tracked and untracked-but-not-ignored files,
uncommitted edits included, copied with `gcloud compute tpus tpu-vm scp --worker=all`) or from a git
URL (--repo-url) that every worker clones.

Required:
  --name NAME            TPU (node) name given to tpu/create.sh.
  --zone ZONE            Zone of the TPU.

Options:
  --project PROJECT      GCP project (default: gcloud's configured project).
  --worker W             Worker to set up: all (default) or an index (0, 1, ...).
  --repo-url URL         git clone URL instead of copying this checkout (needs network on the workers).
  --ref REF              With --repo-url: branch, tag or commit to check out (default: the default branch).
  --remote-dir DIR       Checkout directory on the workers, relative to $HOME (default: gadjax).
  --configs DIR          A local directory of extra config files, copied to REMOTE_DIR/configs/ on every
                         worker (the repository's own configs/ always comes with the source).
  --python VERSION       Python version of the venv (default 3.11; gadjax needs >= 3.11). Installed
                         with uv (from PyPI) when the image's python3 is older, as on the v2-alpha images.
  --extras EXTRAS        pip extras to install (default: tpu). E.g. tpu,test to run the tests there.
  --skip-check           Do not run the JAX device check at the end.
  --dry-run              Print the gcloud commands (and the remote script) instead of running them.
  -h, --help             Show this help.

Example:
  tpu/setup.sh --name gad-v5p --zone us-east5-a --configs ~/my-gad-configs
EOF
}

NAME="" ZONE="" PROJECT="" WORKER=all REPO_URL="" REF="" REMOTE_DIR=$GADJAX_REMOTE_DIR_DEFAULT CONFIGS=""
PYVER=3.11 EXTRAS=tpu SKIP_CHECK=0

normalize_args "$@"
set -- "${ARGS[@]}"
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --zone) need_value "$@"; ZONE=$2; shift 2 ;;
    --project) need_value "$@"; PROJECT=$2; shift 2 ;;
    --worker) need_value "$@"; WORKER=$2; shift 2 ;;
    --repo-url) need_value "$@"; REPO_URL=$2; shift 2 ;;
    --ref) need_value "$@"; REF=$2; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR=$2; shift 2 ;;
    --configs) need_value "$@"; CONFIGS=$2; shift 2 ;;
    --python) need_value "$@"; PYVER=$2; shift 2 ;;
    --extras) need_value "$@"; EXTRAS=$2; shift 2 ;;
    --skip-check) SKIP_CHECK=1; shift ;;
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
[[ -n $REF && -z $REPO_URL ]] && die "--ref needs --repo-url (a copied checkout is used as it is)"
[[ $REMOTE_DIR =~ ^[A-Za-z0-9._][A-Za-z0-9._/-]*$ && $REMOTE_DIR != *..* ]] \
  || die "--remote-dir '$REMOTE_DIR' must be a relative path without '..' (it lives under \$HOME)"
[[ $PYVER =~ ^3\.[0-9]+$ ]] || die "--python '$PYVER' must look like 3.11"
(( ${PYVER#3.} >= 11 )) || die "--python $PYVER: gadjax needs Python >= 3.11"
[[ $EXTRAS =~ ^[a-z0-9_,-]+$ ]] || die "--extras '$EXTRAS' must be a comma-separated list like tpu,test"
if [[ -n $CONFIGS && ! -d $CONFIGS ]]; then
  die "--configs '$CONFIGS' is not a directory"
fi

require_gcloud
gcloud_scope "$ZONE" "$PROJECT"
WORKERS=("--worker=$WORKER")
ROOT=$(repo_root)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# 1. The source.
if [[ -z $REPO_URL ]]; then
  command -v git >/dev/null || die "git is needed to list the files of this checkout"
  # Tracked + untracked-but-not-ignored files that exist (venvs, runs and caches stay behind).
  while IFS= read -r -d '' f; do
    if [[ -e $ROOT/$f ]]; then printf '%s\0' "$f"; fi
  done < <(git -C "$ROOT" ls-files -co --exclude-standard -z) >"$TMP/files"
  tar -czf "$TMP/gadjax-src.tgz" -C "$ROOT" --null -T "$TMP/files"
  log "copying $(tr -cd '\0' <"$TMP/files" | wc -c) files from $ROOT"
  run gcloud compute tpus tpu-vm scp "$TMP/gadjax-src.tgz" "$NAME:gadjax-src.tgz" "${SCOPE[@]}" "${WORKERS[@]}"
  FETCH="mkdir -p ~/$REMOTE_DIR && tar -xzf ~/gadjax-src.tgz -C ~/$REMOTE_DIR && rm ~/gadjax-src.tgz"
else
  q_url=$(printf '%q' "$REPO_URL")
  FETCH="if [ -d ~/$REMOTE_DIR/.git ]; then git -C ~/$REMOTE_DIR fetch --all --tags;"
  FETCH+=" else git clone $q_url ~/$REMOTE_DIR; fi"
  if [[ -n $REF ]]; then
    FETCH+=" && git -C ~/$REMOTE_DIR checkout $(printf '%q' "$REF")"
  else
    FETCH+=" && (git -C ~/$REMOTE_DIR pull --ff-only || true)"
  fi
fi

# 2. Extra configs.
if [[ -n $CONFIGS ]]; then
  tar -czf "$TMP/gadjax-configs.tgz" -C "$CONFIGS" .
  run gcloud compute tpus tpu-vm scp "$TMP/gadjax-configs.tgz" "$NAME:gadjax-configs.tgz" \
    "${SCOPE[@]}" "${WORKERS[@]}"
  FETCH+=" && mkdir -p ~/$REMOTE_DIR/configs && tar -xzf ~/gadjax-configs.tgz -C ~/$REMOTE_DIR/configs"
  FETCH+=" && rm ~/gadjax-configs.tgz"
fi

# 3. The venv and the install, then a device check, on every worker at once (all workers of a pod must
# initialise the TPU runtime together, so the check runs in the same --worker=all command).
CHECK="true"
if [[ $SKIP_CHECK == 0 ]]; then
  CHECK=".venv/bin/python -c 'import jax; print(\"[gadjax setup]\", jax.__version__, jax.devices()[0].device_kind,"
  CHECK+=" \"process\", jax.process_index(), \"of\", jax.process_count(), \"local devices\", jax.local_device_count())'"
fi
REMOTE=$(cat <<EOF
set -euo pipefail
$FETCH
cd ~/$REMOTE_DIR
if python3 -c 'import sys; sys.exit(0 if sys.version_info >= (${PYVER/./, }) else 1)'; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[$EXTRAS]'
else
  python3 -m pip install -q --user uv
  [ -x .venv/bin/python ] || ~/.local/bin/uv venv --python $PYVER .venv
  ~/.local/bin/uv pip install -q --python .venv/bin/python -e '.[$EXTRAS]'
fi
$CHECK
EOF
)
if [[ $DRY_RUN == 1 ]]; then
  printf '# remote script (runs on every worker):\n%s\n' "$REMOTE"
fi
run gcloud compute tpus tpu-vm ssh "$NAME" "${SCOPE[@]}" "${WORKERS[@]}" "--command=$(remote_bash_command "$REMOTE")"
log "set up ~/$REMOTE_DIR on worker(s) $WORKER of $NAME; next: tpu/launch.sh --name $NAME --zone $ZONE -- ..."
