#!/usr/bin/env bash
# The rerank depth (20, 50 or 100) chosen on NFCorpus dev for zero-shot and for the best
# committed adapter (LoRA on 500 training queries, retrained from its committed config:
# adapter weights are not committed), over the hybrid first stage; then test once at the
# chosen depth. A shallower depth's rerank is the depth-100 rerank's scores of the first
# stage's top k (each pair is scored alone), so dev is reranked once, at 100.
# `bash run.sh` runs everything; `bash run.sh dev` one part. NFCorpus is free for academic
# use (NutritionFacts.org's terms otherwise): only runs and metrics are committed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
D=results/nfcorpus/depth
P=runs/prepare/nfcorpus-hybrid
LORA=runs/nfcorpus/train/lora-500

prepare() {
  qpeft prepare --config configs/prepare-nfcorpus.yaml  # BM25 groups: LoRA-500's training data
  qpeft prepare --config configs/prepare-nfcorpus.yaml --set prepare.first_stage.kind=hybrid \
    --set prepare.output_dir=$P
}

lora() {
  qpeft train --config results/nfcorpus/train.yaml --set adapter.method=lora \
    --set train.max_train_queries=500 --set train.epochs=1 --set run.name=lora-500 \
    --set run.storage_path=runs/nfcorpus/train
}

# Document-major bf16 against the committed query-major run of the same system (zero-shot
# over BM25's top 20 of all dev queries, batches of 8 then): how far rankings move.
bf16() {
  qpeft rerank --config results/nfcorpus/rerank.yaml --set rerank.split=dev \
    --set rerank.output_dir=$D/runs --set rerank.name=dev-bm25-zero_shot-d20-document_major
  qpeft evaluate --config $D/evaluate-bf16.yaml
}

dev() {
  qpeft rerank --config $D/rerank.yaml --set rerank.name=dev-zero_shot
  qpeft rerank --config $D/rerank.yaml --set rerank.method=lora \
    --set rerank.adapter_dir=$LORA/adapter --set rerank.name=dev-lora
}

study_dev() {
  python scripts/depth_study.py --prepared $P --split dev --runs first_stage=$D/runs/dev-zero_shot \
    zero_shot=$D/runs/dev-zero_shot lora=$D/runs/dev-lora --depths 20 50 100 --out $D/dev
}

# Test once, at the depth dev chose ($1), with the fusion weights dev chose at that depth.
test_at() {
  local depth=$1
  qpeft rerank --config $D/rerank.yaml --set rerank.split=test --set rerank.depth=$depth \
    --set rerank.name=test-zero_shot-d$depth
  qpeft rerank --config $D/rerank.yaml --set rerank.split=test --set rerank.depth=$depth \
    --set rerank.method=lora --set rerank.adapter_dir=$LORA/adapter \
    --set rerank.name=test-lora-d$depth
  python scripts/depth_study.py --prepared $P --split test --runs first_stage=$D/runs/test-zero_shot-d$depth \
    zero_shot=$D/runs/test-zero_shot-d$depth lora=$D/runs/test-lora-d$depth \
    --depths $depth --fusion-from $D/dev/study.json --out $D/test
}

if [ $# -gt 0 ]; then "$@"; else prepare; bf16; lora; dev; study_dev; fi
