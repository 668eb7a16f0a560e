#!/usr/bin/env bash
# Gated hints vs the paper's plain hint tokens for Q-PEFT-A and Q-PEFT-R on Cranfield dev
# (train.yaml says how), and the gate's learning rate; each run's metrics.json holds its
# dev curve. About 15 minutes a run on a 2-core CPU in bf16.
# Needs: qpeft prepare --config configs/prepare-cranfield.yaml
# `bash run.sh qpeft_a` runs one method's part.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
C=results/cranfield/gate/train.yaml

run() {  # run NAME METHOD [--set ...]
  local name=$1 method=$2
  shift 2
  qpeft train --config $C --set adapter.method="$method" --set run.name="$name" "$@"
}

qpeft_a() {
  run qpeft-a-gated qpeft_a --set adapter.hint_gate=true --set train.gate_lr=null
  run qpeft-a-gated-glr1e-2 qpeft_a --set adapter.hint_gate=true --set train.gate_lr=1.0e-2
  run qpeft-a-plain qpeft_a --set adapter.hint_gate=false
}

qpeft_r() {
  run qpeft-r-gated-glr1e-2 qpeft_r --set adapter.hint_gate=true --set train.gate_lr=1.0e-2
  run qpeft-r-plain qpeft_r --set adapter.hint_gate=false
}

# The gated default on the stronger packaged backbone, Gemma 3 270M (zero-shot on this dev
# check: 0.3093, results/cranfield/init): the same settings, the gate's default lr.
gemma() {
  run gemma3-270m-qpeft-a-gated qpeft_a --set model.name=gemma3-270m --set adapter.hint_gate=true
  run gemma3-270m-qpeft-r-gated qpeft_r --set model.name=gemma3-270m --set adapter.hint_gate=true
}

# Every stored negative in each query's listwise group (7, as tevatron-style training
# groups do) instead of 2: 3.5x the ranking signal per query and epoch.
gemma_negatives() {
  run gemma3-270m-qpeft-a-gated-neg7 qpeft_a --set model.name=gemma3-270m \
    --set adapter.hint_gate=true --set train.max_negatives=7
}

# The one run whose dev gain passed 0.005 over zero-shot (plain Q-PEFT-R, epoch 2), read
# once on test against bf16 zero-shot (results/cranfield/dtype/run.sh makes that run), with
# the fusion weight its training chose on dev.
test_r_plain() {
  qpeft rerank --config results/cranfield/trained/rerank.yaml --set model.dtype=bfloat16 \
    --set rerank.method=qpeft_r --set rerank.adapter_dir=results/cranfield/gate/train/qpeft-r-plain/adapter \
    --set rerank.split=test --set rerank.name=test-qpeft_r_plain-bf16 \
    --set rerank.output_dir=results/cranfield/gate/runs
  qpeft evaluate --config results/cranfield/gate/evaluate-test.yaml
}

if [ $# -eq 0 ]; then qpeft_a; qpeft_r; test_r_plain; gemma; gemma_negatives; else "$@"; fi
