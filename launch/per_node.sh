#!/usr/bin/env bash
# Start this node's ranks without ssh (run it once on every node, e.g. from a scheduler):
#   HOSTFILE=hosts NODE_RANK=0 MASTER_ADDR=10.0.0.1 launch/per_node.sh configs/wan1.3b/self_forcing_dmd.yaml [key=value ...]
# The hostfile fixes the node order and each node's rank count (slots); NODE_RANK picks this node's line.
# On a CPU-only machine set DS_ACCELERATOR=cpu (gloo); two node ranks on 127.0.0.1 exercise the
# multi-node path on one machine (launch/README.md).
set -euo pipefail
: "${HOSTFILE:?set HOSTFILE to a DeepSpeed hostfile}"
: "${NODE_RANK:?set NODE_RANK (0 .. nodes-1)}"
: "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}"
exec deepspeed --hostfile "$HOSTFILE" --no_ssh --node_rank "$NODE_RANK" \
  --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" ${DS_EXTRA:-} \
  --no_local_rank --module vidforce.cli train "$@"
