#!/usr/bin/env bash
# Several nodes with DeepSpeed's launcher (ssh/pdsh to each host of the hostfile):
#   scripts/train_multinode_deepspeed.sh scripts/hostfile.example configs/my_sft.yaml train.zero_stage=3
# The launcher sets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR for every process; `xgenmm-fast train`
# reads them (and ignores the --local_rank argument the launcher appends). It passes on to the other hosts only
# variables named MLFLOW*, PYTHON*, MV2*, UCX* and those listed in a .deepspeed_env file (in ~ or here): put
# backend and kernel choices in the config (model.ops, model.kernel_settings), not in XGENMM_* variables.
set -euo pipefail
HOSTFILE=${1:?hostfile}; CONFIG=${2:?training config}; shift 2
exec deepspeed --hostfile "$HOSTFILE" --master_port "${MASTER_PORT:-29500}" \
  --module xgenmm_fast.cli train --config "$CONFIG" "$@"
