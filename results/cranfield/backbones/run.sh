#!/usr/bin/env bash
# Zero-shot SmolLM2-135M vs Gemma 3 270M (and BM25) on Cranfield dev and test, through the
# project's own commands. Needs `qpeft prepare --config configs/prepare-cranfield.yaml`.
set -euo pipefail
cd "$(dirname "$0")/../../.."
C=results/cranfield/backbones/rerank.yaml
for split in dev test; do
  qpeft rerank --config $C --set rerank.split=$split --set rerank.method=first_stage \
    --set rerank.name=$split-bm25
  for model in smollm2-135m gemma3-270m; do
    qpeft rerank --config $C --set rerank.split=$split --set model.name=$model \
      --set rerank.name=$split-$model
  done
  qpeft evaluate --config results/cranfield/backbones/evaluate-$split.yaml
done
