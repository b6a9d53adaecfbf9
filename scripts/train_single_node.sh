#!/usr/bin/env bash
# One node, N processes (GPUs, or CPU ranks with DS_ACCELERATOR=cpu): the tested launch path.
#   scripts/train_single_node.sh 8 configs/my_sft.yaml train.zero_stage=2 optim.lr=2e-5
set -euo pipefail
NPROC=${1:?number of processes}; CONFIG=${2:?training config}; shift 2
exec torchrun --standalone --nproc_per_node "$NPROC" -m xgenmm_fast.cli train --config "$CONFIG" "$@"
