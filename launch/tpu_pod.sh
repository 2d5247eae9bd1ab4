#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice (one jaxspo process per worker).
#
# Usage: launch/tpu_pod.sh TPU_NAME ZONE [jaxspo launch options] CONFIG [key=value ...]
#   e.g. launch/tpu_pod.sh my-v5p-64 us-east5-a configs/demo.yaml run_dir=/mnt/shared/runs/demo
#        launch/tpu_pod.sh my-v5p-64 us-east5-a --dry-run configs/demo.yaml   # print the gcloud command
# Every worker needs this repository at ~/$JAXSPO_WORKDIR (default ~/jaxspo) with jaxspo installed
# ($JAXSPO_BIN, default .venv/bin/jaxspo); run_dir must be a folder all workers share (Filestore/NFS or gcsfuse mount).
# QUEUED=1: TPU_NAME is a queued resource (all its nodes and workers). Runs `jaxspo launch --tpu`.
set -euo pipefail
if [ $# -lt 3 ]; then grep -E '^#( |$)' "$0"; exit 2; fi
name=$1 zone=$2
shift 2
target=(--tpu "$name")
if [ "${QUEUED:-0}" = 1 ]; then target=(--queued-resource "$name"); fi
exec jaxspo launch "${target[@]}" --zone "$zone" --workdir "${JAXSPO_WORKDIR:-jaxspo}" --jaxspo "${JAXSPO_BIN:-.venv/bin/jaxspo}" "$@"
