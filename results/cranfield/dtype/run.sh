#!/usr/bin/env bash
# bf16 vs fp32 on Cranfield test: the fp32 runs come from results/cranfield/trained/run.sh
# (zero_shot smollm2-135m and sweep_best); these rerank the same systems with the LM in bf16.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
D=results/cranfield/trained
A=results/cranfield/sweep/qpeft-a-lr/best_adapter
qpeft rerank --config $D/rerank.yaml --set model.dtype=bfloat16 --set rerank.split=test \
  --set rerank.name=test-smollm2-135m-zero_shot-bf16 \
  --set rerank.fusion=$D/runs/dev-smollm2-135m-zero_shot/fusion.json
qpeft rerank --config $D/rerank.yaml --set model.dtype=bfloat16 --set rerank.method=qpeft_a \
  --set rerank.adapter_dir=$A --set rerank.split=test \
  --set rerank.name=test-smollm2-135m-qpeft_a_sweep-bf16 \
  --set rerank.fusion=$D/runs/dev-smollm2-135m-qpeft_a_sweep/fusion.json
qpeft evaluate --config results/cranfield/dtype/evaluate-test.yaml
