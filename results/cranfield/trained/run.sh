#!/usr/bin/env bash
# Cranfield, BM25 top 20, fp32 on a 2-core CPU, Gemma 3 270M: BM25, zero-shot and Q-PEFT-A
# (the paper's pairwise loss, and listwise without the pointwise term), raw and fused with
# BM25, fusion weights chosen on dev, never on test; through the project's own commands.
# Needs: qpeft prepare --config configs/prepare-cranfield.yaml. About 80 minutes here.
set -euo pipefail
cd "$(dirname "$0")/../../.."
D=results/cranfield/trained
M=gemma3-270m
for split in dev test; do
  qpeft rerank --config $D/rerank.yaml --set rerank.split=$split --set rerank.method=first_stage \
    --set rerank.name=$split-bm25
done
# Zero-shot: its fusion weight is chosen on dev, and the test rerank reads it from there.
qpeft rerank --config $D/rerank.yaml --set model.name=$M --set rerank.split=dev \
  --set rerank.name=dev-$M-zero_shot --set rerank.fusion=choose
qpeft rerank --config $D/rerank.yaml --set model.name=$M --set rerank.split=test \
  --set rerank.name=test-$M-zero_shot --set rerank.fusion=$D/runs/dev-$M-zero_shot/fusion.json
# Q-PEFT-A, two losses; each adapter's fusion weight is chosen the same way.
for variant in qpeft_a qpeft_a_listwise; do
  loss=()
  [ $variant = qpeft_a_listwise ] && loss=(--set loss.kind=listwise --set loss.pointwise_weight=0)
  run=$M-${variant//_/-}
  qpeft train --config $D/train.yaml --set model.name=$M --set run.name=$run "${loss[@]}"
  for split in dev test; do
    fusion=choose
    [ $split = test ] && fusion=$D/runs/dev-$M-$variant/fusion.json
    qpeft rerank --config $D/rerank.yaml --set model.name=$M --set rerank.method=qpeft_a \
      --set rerank.adapter_dir=$D/train/$run/adapter --set rerank.split=$split \
      --set rerank.name=$split-$M-$variant --set rerank.fusion=$fusion
  done
done
qpeft evaluate --config $D/evaluate-dev.yaml
qpeft evaluate --config $D/evaluate-test.yaml
