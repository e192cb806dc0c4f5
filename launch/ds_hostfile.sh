#!/usr/bin/env bash
# Multi-node training from one head node through the DeepSpeed launcher (pdsh over ssh by default).
#   HOSTFILE=launch/hostfile.example launch/ds_hostfile.sh configs/wan1.3b/self_forcing_dmd.yaml [key=value ...]
# Env: HOSTFILE (required), MASTER_ADDR (default: first host), MASTER_PORT (29500), LAUNCHER (pdsh | openmpi |
# slurm | mpich | impi | mvapich), DS_EXTRA (more deepspeed launcher flags).
set -euo pipefail
: "${HOSTFILE:?set HOSTFILE to a DeepSpeed hostfile (launch/hostfile.example)}"
MASTER_ADDR="${MASTER_ADDR:-$(grep -v '^\s*#' "$HOSTFILE" | awk 'NF {print $1; exit}')}"
exec deepspeed --hostfile "$HOSTFILE" --launcher "${LAUNCHER:-pdsh}" \
  --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" ${DS_EXTRA:-} \
  --no_local_rank --module vidforce.cli train "$@"
