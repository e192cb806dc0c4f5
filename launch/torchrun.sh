#!/usr/bin/env bash
# The same training through torchrun (one call per node):
#   NNODES=2 NODE_RANK=0 GPUS_PER_NODE=8 MASTER_ADDR=10.0.0.1 launch/torchrun.sh configs/wan1.3b/self_forcing_dmd.yaml
# Defaults: one node, all visible GPUs (or 1 process on CPU), MASTER_ADDR 127.0.0.1, MASTER_PORT 29500.
set -euo pipefail
if command -v nvidia-smi >/dev/null 2>&1; then DEFAULT_GPUS="$(nvidia-smi -L | wc -l)"; else DEFAULT_GPUS=1; fi
exec torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "${GPUS_PER_NODE:-$DEFAULT_GPUS}" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  -m vidforce.cli train "$@"
