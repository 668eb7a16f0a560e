#!/usr/bin/env bash
# DeepSpeed ZeRO-2/3 training steps of the qpeft engine on one GPU (see gpu_train_step.py).
#   bash benchmarks/gpu_train.sh CONFIG_DIR PAIRS_JSONL
set -euo pipefail
cfg=$1 pairs=$2
step() { python benchmarks/gpu_train_step.py --model "$cfg" --pairs "$pairs" "$@"; }
step --stage 2
step --stage 3
step --stage 3 --method qpeft_r
step --stage 3 --shape 7b --steps 5 --gradient-checkpointing
