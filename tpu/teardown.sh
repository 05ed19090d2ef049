#!/usr/bin/env bash
# Delete a TPU VM / pod slice, or the queued resource that holds it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/teardown.sh --name NAME --zone ZONE [--queued] [--yes] [options]

Delete the TPU and stop its billing. Everything on the workers' disks goes with it (the checkout,
logs/, a per-host teacher cache, local checkpoints): keep checkpoints and run outputs on gs://.

Required:
  --name NAME        TPU (node) name; with --queued, the queued-resource id (tpu/create.sh uses the
                     same name for both).
  --zone ZONE        Zone of the TPU.

Options:
  --project PROJECT  GCP project (default: gcloud's configured project).
  --queued           The TPU was made with tpu/create.sh --queued: delete the queued resource and,
                     with it, its TPU (`gcloud compute tpus queued-resources delete --force`).
  --yes              Do not ask for confirmation (needed when stdin is not a terminal).
  --async            Return without waiting for the deletion to finish.
  --dry-run          Print the gcloud command instead of running it.
  -h, --help         Show this help.
EOF
}

NAME="" ZONE="" PROJECT="" QUEUED=0 YES=0 ASYNC=0

normalize_args "$@"
set -- "${ARGS[@]}"
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --zone) need_value "$@"; ZONE=$2; shift 2 ;;
    --project) need_value "$@"; PROJECT=$2; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --yes) YES=1; shift ;;
    --async) ASYNC=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1'" ;;
  esac
done

require_set --name "$NAME"
require_set --zone "$ZONE"
validate_name --name "$NAME"
validate_zone --zone "$ZONE"

require_gcloud
gcloud_scope "$ZONE" "$PROJECT"
what="TPU $NAME"
[[ $QUEUED == 1 ]] && what="queued resource $NAME and its TPU"
if [[ $YES == 0 && $DRY_RUN == 0 ]]; then
  [[ -t 0 ]] || die "stdin is not a terminal: pass --yes to delete the $what"
  read -r -p "Delete the $what in $ZONE? [y/N] " answer
  [[ $answer == y || $answer == Y ]] || { log "nothing deleted"; exit 1; }
fi
EXTRA=(--quiet)
[[ $ASYNC == 1 ]] && EXTRA+=(--async)
if [[ $QUEUED == 1 ]]; then
  run gcloud compute tpus queued-resources delete "$NAME" "${SCOPE[@]}" --force "${EXTRA[@]}"
else
  run gcloud compute tpus tpu-vm delete "$NAME" "${SCOPE[@]}" "${EXTRA[@]}"
fi
log "deleted the $what"
