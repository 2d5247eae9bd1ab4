#!/usr/bin/env bash
# Multi-host training over ssh without a scheduler: one jaxspo process per host; the first host coordinates.
#
# Usage: launch/hosts.sh HOSTFILE [jaxspo launch options] CONFIG [key=value ...]
#   e.g. launch/hosts.sh hosts.txt configs/demo.yaml run_dir=/shared/runs/demo
#        launch/hosts.sh hosts.txt --dry-run configs/demo.yaml   # print the ssh commands
# HOSTFILE: one host (or user@host) per line, # comments. Every host needs passwordless ssh and this
# checkout at the same path ($JAXSPO_WORKDIR, default this directory) with .venv/bin/jaxspo ($JAXSPO_BIN);
# run_dir must be shared (NFS). Coordinator port 8476 on the first host (--port to change). Runs `jaxspo launch --hostfile`.
set -euo pipefail
if [ $# -lt 2 ]; then grep -E '^#( |$)' "$0"; exit 2; fi
hostfile=$1
shift
exec jaxspo launch --hostfile "$hostfile" --workdir "${JAXSPO_WORKDIR:-$PWD}" --jaxspo "${JAXSPO_BIN:-.venv/bin/jaxspo}" "$@"
