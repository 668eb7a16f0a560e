#!/usr/bin/env bash
# Cranfield, BM25 top 20, fp32 on a 2-core CPU: BM25, zero-shot and Q-PEFT-A for SmolLM2-135M
# and Gemma 3 270M, raw and fused with BM25 (fusion weights chosen on dev, never on test),
# through the project's own commands. Needs: qpeft prepare --config configs/prepare-cranfield.yaml
set -euo pipefail
cd "$(dirname "$0")/../../.."
D=results/cranfield/trained
for split in dev test; do
  qpeft rerank --config $D/rerank.yaml --set rerank.split=$split --set rerank.method=first_stage \
    --set rerank.name=$split-bm25
done
for model in ${MODELS:-gemma3-270m smollm2-135m}; do
  qpeft train --config $D/train.yaml --set model.name=$model --set run.name=$model-qpeft-a
  # Zero-shot, and the trained adapter: each picks its fusion weight on dev, then test uses it.
  qpeft rerank --config $D/rerank.yaml --set model.name=$model --set rerank.split=dev \
    --set rerank.name=dev-$model-zero_shot --set rerank.fusion=choose
  qpeft rerank --config $D/rerank.yaml --set model.name=$model --set rerank.split=test \
    --set rerank.name=test-$model-zero_shot \
    --set rerank.fusion=$D/runs/dev-$model-zero_shot/fusion.json
  qpeft rerank --config $D/rerank.yaml --set model.name=$model --set rerank.method=qpeft_a \
    --set rerank.adapter_dir=$D/train/$model-qpeft-a/adapter --set rerank.split=dev \
    --set rerank.name=dev-$model-qpeft_a --set rerank.fusion=choose
  qpeft rerank --config $D/rerank.yaml --set model.name=$model --set rerank.method=qpeft_a \
    --set rerank.adapter_dir=$D/train/$model-qpeft-a/adapter --set rerank.split=test \
    --set rerank.name=test-$model-qpeft_a \
    --set rerank.fusion=$D/runs/dev-$model-qpeft_a/fusion.json
done
qpeft evaluate --config $D/evaluate-dev.yaml
qpeft evaluate --config $D/evaluate-test.yaml
