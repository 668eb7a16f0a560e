#!/usr/bin/env bash
# Cranfield (225 queries, 1,400 documents; random splits, prepare-cranfield.yaml): BM25,
# dense (all-MiniLM-L6-v2, exact inner product) and hybrid (dense weight chosen on dev by
# `qpeft prepare`) candidate sets, their top 100 on dev and test; then Gemma 3 270M
# zero-shot, the demo's best LLM system, over each set's top 20, fused with that set's
# first-stage scores at a weight chosen on dev.
# `bash run.sh` runs everything; `bash run.sh runs` runs one part.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
F=results/cranfield/first_stage
prepared_for() { if [ "$1" = bm25 ]; then echo runs/prepare/cranfield; else echo runs/prepare/cranfield-$1; fi; }

prepare() {
  qpeft prepare --config configs/prepare-cranfield.yaml
  for kind in dense hybrid; do
    qpeft prepare --config configs/prepare-cranfield.yaml --set prepare.first_stage.kind=$kind \
      --set prepare.output_dir="$(prepared_for $kind)"
  done
}

runs() {
  for kind in bm25 dense hybrid; do
    for split in dev test; do
      qpeft rerank --config configs/rerank-cranfield.yaml --set rerank.method=first_stage \
        --set rerank.adapter_dir=null --set rerank.prepared_dir="$(prepared_for $kind)" \
        --set rerank.depth=100 --set rerank.split=$split --set rerank.output_dir=$F/runs \
        --set rerank.name=$split-$kind
    done
  done
  qpeft evaluate --config $F/evaluate-dev.yaml
}

rerank() {
  local kind=$1
  local common=(--config configs/rerank-cranfield.yaml --set rerank.method=zero_shot
    --set rerank.adapter_dir=null --set rerank.prepared_dir="$(prepared_for $kind)"
    --set rerank.output_dir=$F/runs)
  qpeft rerank "${common[@]}" --set rerank.split=dev --set rerank.name=dev-zero_shot-$kind \
    --set rerank.fusion=choose
  qpeft rerank "${common[@]}" --set rerank.split=test --set rerank.name=test-zero_shot-$kind \
    --set rerank.fusion=$F/runs/dev-zero_shot-$kind/fusion.json
}

main() {
  prepare
  runs
  for kind in bm25 dense hybrid; do rerank $kind; done
  qpeft evaluate --config $F/evaluate-test.yaml
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  if [ $# -gt 0 ]; then "$@"; else main; fi
fi
