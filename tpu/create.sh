#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice for gadjax, directly or through a queued resource.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/create.sh --name NAME --zone ZONE --accelerator-type TYPE [options]

Create a TPU VM (one host, e.g. v5p-8) or a multi-host pod slice (e.g. v5p-64 = 32 chips on 8 hosts).
Every host of a slice is a "worker"; tpu/setup.sh and tpu/launch.sh address them all with --worker=all.

Required:
  --name NAME              TPU (node) name: lowercase letters, digits, hyphens. With --queued it is also
                           the queued-resource id.
  --zone ZONE              Zone that has the accelerator, e.g. us-east5-a (v5p), us-central2-b (v4).
  --accelerator-type TYPE  Accelerator type, e.g. v5p-8, v5p-64, v5litepod-16, v6e-8, v4-32.
                           The number counts TensorCores for v4 / v5p (v5p-64 is 32 chips) and chips
                           for v5e / v6e.

Options:
  --project PROJECT        GCP project (default: gcloud's configured project).
  --version RUNTIME        TPU runtime (software) version. Default by type: v5p -> v2-alpha-tpuv5,
                           v5litepod -> v2-alpha-tpuv5-lite, v6e -> v2-alpha-tpuv6e,
                           v4 -> tpu-ubuntu2204-base. Required for other types.
  --spot                   Spot capacity (cheap, preemptible at any time; recreate after preemption).
  --reserved               Use the project's reserved capacity. Exclusive with --spot.
  --queued                 Create through a queued resource (`gcloud compute tpus queued-resources
                           create`): the request waits in a queue until capacity exists. Recommended
                           for large slices and spot capacity.
  --valid-until DURATION   With --queued: give up if not provisioned within DURATION (e.g. 6h, 2d).
  --wait                   With --queued: poll until the queued resource is ACTIVE (or FAILED).
  --wait-timeout MINUTES   With --wait: stop polling after MINUTES (default 120).
  --network NETWORK        VPC network (default: gcloud's default network).
  --subnetwork SUBNET      Subnetwork of --network.
  --service-account EMAIL  Service account of the VMs (it needs Storage access for gs:// checkpoints
                           and, with tpu/launch.sh --key-secret, Secret Manager access).
  --dry-run                Print the gcloud commands instead of running them.
  -h, --help               Show this help.

Examples:
  tpu/create.sh --name gad-v5p --zone us-east5-a --accelerator-type v5p-64 --queued --spot --wait
  tpu/create.sh --name gad-dev --zone us-east5-a --accelerator-type v5p-8
EOF
}

NAME="" ZONE="" PROJECT="" ACCEL="" VERSION="" SPOT=0 RESERVED=0 QUEUED=0 VALID_UNTIL="" WAIT=0
WAIT_TIMEOUT=120 NETWORK="" SUBNETWORK="" SERVICE_ACCOUNT=""

normalize_args "$@"
set -- "${ARGS[@]}"
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --zone) need_value "$@"; ZONE=$2; shift 2 ;;
    --project) need_value "$@"; PROJECT=$2; shift 2 ;;
    --accelerator-type) need_value "$@"; ACCEL=$2; shift 2 ;;
    --version) need_value "$@"; VERSION=$2; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --reserved) RESERVED=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --valid-until) need_value "$@"; VALID_UNTIL=$2; shift 2 ;;
    --wait) WAIT=1; shift ;;
    --wait-timeout) need_value "$@"; WAIT_TIMEOUT=$2; shift 2 ;;
    --network) need_value "$@"; NETWORK=$2; shift 2 ;;
    --subnetwork) need_value "$@"; SUBNETWORK=$2; shift 2 ;;
    --service-account) need_value "$@"; SERVICE_ACCOUNT=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1'" ;;
  esac
done

require_set --name "$NAME"
require_set --zone "$ZONE"
require_set --accelerator-type "$ACCEL"
validate_name --name "$NAME"
validate_zone --zone "$ZONE"
[[ $ACCEL =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] \
  || die "--accelerator-type '$ACCEL' is not a type like v5p-64, v5litepod-16, v6e-8 or v4-32"
validate_uint --wait-timeout "$WAIT_TIMEOUT"
[[ $SPOT == 1 && $RESERVED == 1 ]] && die "--spot and --reserved are exclusive"
[[ -n $VALID_UNTIL && $QUEUED == 0 ]] && die "--valid-until needs --queued"
[[ $WAIT == 1 && $QUEUED == 0 ]] && die "--wait needs --queued (a direct create already waits)"
[[ -n $SUBNETWORK && -z $NETWORK ]] && die "--subnetwork needs --network"
if [[ -n $VALID_UNTIL && ! $VALID_UNTIL =~ ^[0-9]+[smhd]$ ]]; then
  die "--valid-until '$VALID_UNTIL' must be a duration like 90m, 6h or 2d"
fi

if [[ -z $VERSION ]]; then
  case $ACCEL in
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    v4-*) VERSION=tpu-ubuntu2204-base ;;
    *) die "no default runtime for '$ACCEL': pass --version" ;;
  esac
fi

require_gcloud
gcloud_scope "$ZONE" "$PROJECT"
EXTRA=()
[[ $SPOT == 1 ]] && EXTRA+=(--spot)
[[ $RESERVED == 1 ]] && EXTRA+=(--reserved)
[[ -n $NETWORK ]] && EXTRA+=("--network=$NETWORK")
[[ -n $SUBNETWORK ]] && EXTRA+=("--subnetwork=$SUBNETWORK")
[[ -n $SERVICE_ACCOUNT ]] && EXTRA+=("--service-account=$SERVICE_ACCOUNT")

if [[ $QUEUED == 0 ]]; then
  run gcloud compute tpus tpu-vm create "$NAME" "${SCOPE[@]}" \
    "--accelerator-type=$ACCEL" "--version=$VERSION" "${EXTRA[@]}"
  log "created $NAME; next: tpu/setup.sh --name $NAME --zone $ZONE"
  exit 0
fi

[[ -n $VALID_UNTIL ]] && EXTRA+=("--valid-until-duration=$VALID_UNTIL")
run gcloud compute tpus queued-resources create "$NAME" "${SCOPE[@]}" "--node-id=$NAME" \
  "--accelerator-type=$ACCEL" "--runtime-version=$VERSION" "${EXTRA[@]}"

if [[ $WAIT == 0 ]]; then
  log "queued $NAME; check with: gcloud compute tpus queued-resources describe $NAME ${SCOPE[*]}"
  exit 0
fi
[[ $DRY_RUN == 1 ]] && {
  log "would poll the queued resource state until ACTIVE (timeout ${WAIT_TIMEOUT} min)"
  exit 0
}
deadline=$(($(date +%s) + WAIT_TIMEOUT * 60))
while true; do
  state=$(gcloud compute tpus queued-resources describe "$NAME" "${SCOPE[@]}" --format='value(state.state)')
  log "queued resource $NAME: $state"
  case $state in
    ACTIVE) log "ready; next: tpu/setup.sh --name $NAME --zone $ZONE"; exit 0 ;;
    FAILED | SUSPENDED) log "queued resource $NAME is $state; see gcloud ... describe for why"; exit 1 ;;
  esac
  if [[ $(date +%s) -ge $deadline ]]; then
    log "still $state after $WAIT_TIMEOUT minutes; it stays queued (tpu/teardown.sh --queued removes it)"
    exit 1
  fi
  sleep 30
done
