#!/usr/bin/env bash
# NFCorpus (BEIR, official splits: train 2,590 / dev 324 / test 323 queries), BM25 top 20
# on a 2-core CPU: BM25; zero-shot on Gemma 3 270M and SmolLM2-135M (document length chosen
# on dev); a learning curve of Q-PEFT-A on Gemma over nested training subsets; every LM run
# raw and fused with BM25, fusion weights chosen on dev and read from there for test, never
# chosen on test; through the project's own commands. NFCorpus is free for academic use
# (NutritionFacts.org's terms otherwise): only run files and metrics are committed here.
# `bash run.sh` runs everything; `bash run.sh zero_shot gemma3-270m 96` runs one part.
# Trainings resume from their last checkpoint when re-run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
D=results/nfcorpus

prepare() {
  qpeft prepare --config configs/prepare-nfcorpus.yaml
}

bm25() {
  for split in dev test; do
    qpeft rerank --config $D/rerank.yaml --set rerank.split=$split --set rerank.method=first_stage \
      --set rerank.depth=100 --set rerank.name=$split-bm25
  done
}

# Zero-shot on all dev queries with documents cut at $2 tokens; its fusion weight is chosen
# on dev. evaluate-dev.yaml compares the lengths; `zero_shot_test` tests the one dev chose.
zero_shot() {
  local M=$1 len=$2
  qpeft rerank --config $D/rerank.yaml --set model.name=$M --set template.max_doc_tokens=$len \
    --set rerank.split=dev --set rerank.name=dev-$M-zero_shot-d$len --set rerank.fusion=choose
}

zero_shot_test() {
  local M=$1 len=$2
  qpeft rerank --config $D/rerank.yaml --set model.name=$M --set template.max_doc_tokens=$len \
    --set rerank.split=test --set rerank.name=test-$M-zero_shot-d$len \
    --set rerank.fusion=$D/runs/dev-$M-zero_shot-d$len/fusion.json
}

# One training of $1 (a method) on the first $2 training queries of the nested order
# (`all`: every training group), Gemma 3 270M; further arguments are more `--set`s.
train() {
  local method=$1 size=$2 cap=$2
  shift 2
  [ "$size" = all ] && cap=null
  qpeft train --config $D/train.yaml --set adapter.method=$method \
    --set train.max_train_queries=$cap --set run.name=$method-$size "$@"
}

# The adapter of `train $1 $2` on all dev queries (fusion weight chosen there) and on test.
trained() {
  local method=$1 size=$2
  for split in dev test; do
    local fusion=choose
    [ $split = test ] && fusion=$D/runs/dev-$method-$size/fusion.json
    qpeft rerank --config $D/rerank.yaml --set rerank.method=$method \
      --set rerank.adapter_dir=$D/train/$method-$size/adapter --set rerank.split=$split \
      --set rerank.name=$split-$method-$size --set rerank.fusion=$fusion
  done
}

# The adapter of `train $1 $2` on test only, fused with the weight its training chose on the
# dev check (the adapter carries it): for the methods' runs, whose dev figures are the
# training's dev check (the CPU's budget did not reach their full-dev reranks).
tested() {
  local method=$1 size=$2
  qpeft rerank --config $D/rerank.yaml --set rerank.method=$method \
    --set rerank.adapter_dir=$D/train/$method-$size/adapter --set rerank.split=test \
    --set rerank.name=test-$method-$size
}

# Dev NDCG@10 of Q-PEFT-A against the number of training queries (results/nfcorpus/curve).
# The 500 point is the methods' comparison below (one epoch, for the CPU's budget); 1,500
# was not reached on 2 cores.
curve() {
  train qpeft_a 150
  train qpeft_a all
  python scripts/learning_curve.py --runs $D/train --method qpeft_a --out $D/curve
}

# The paper's methods and the LoRA baseline on the same 500 training queries, one epoch
# each, read on the training's fixed dev subset (train.yaml: the first 80 dev query ids).
methods() {
  for method in qpeft_a qpeft_r soft_prompt lora; do
    train $method 500 --set train.epochs=1
  done
}

# The first stage: BM25 (the `prepare` folder), dense (all-MiniLM-L6-v2, exact inner
# product) and hybrid (both, dense weight chosen on dev by `qpeft prepare`) candidate sets,
# their top 100 on dev and test (results/nfcorpus/first_stage).
F=$D/first_stage
prepared_for() { if [ "$1" = bm25 ]; then echo runs/prepare/nfcorpus; else echo runs/prepare/nfcorpus-$1; fi; }

first_stage_prepare() {
  for kind in dense hybrid; do
    qpeft prepare --config configs/prepare-nfcorpus.yaml --set prepare.first_stage.kind=$kind \
      --set prepare.output_dir="$(prepared_for $kind)"
  done
}

first_stage_runs() {
  for kind in bm25 dense hybrid; do
    for split in dev test; do
      qpeft rerank --config $D/rerank.yaml --set rerank.prepared_dir="$(prepared_for $kind)" \
        --set rerank.method=first_stage --set rerank.depth=100 --set rerank.split=$split \
        --set rerank.output_dir=$F/runs --set rerank.name=$split-$kind
    done
  done
  qpeft evaluate --config $F/evaluate-dev.yaml
}

# The best reranker on test (LoRA, 500 training queries) over the top 20 of candidate set
# $1, fused with that set's first-stage scores at a weight chosen on the first 80 dev
# query ids: the queries training's dev check chose BM25's weight on (test-lora-500).
first_stage_rerank() {
  local kind=$1
  local common=(--config $D/rerank.yaml --set rerank.method=lora
    --set rerank.adapter_dir=$D/train/lora-500/adapter --set rerank.output_dir=$F/runs
    --set rerank.prepared_dir="$(prepared_for $kind)")
  qpeft rerank "${common[@]}" --set rerank.split=dev --set rerank.max_queries=80 \
    --set rerank.name=dev-lora-$kind --set rerank.fusion=choose
  qpeft rerank "${common[@]}" --set rerank.split=test --set rerank.name=test-lora-$kind \
    --set rerank.fusion=$F/runs/dev-lora-$kind/fusion.json
}

first_stage() {
  first_stage_prepare
  first_stage_runs
  for kind in hybrid dense; do first_stage_rerank $kind; done
  qpeft evaluate --config $F/evaluate-test.yaml
}

main() {
  prepare
  bm25
  for len in 96 160; do zero_shot gemma3-270m $len; done
  zero_shot smollm2-135m 96
  methods
  curve
  trained qpeft_a all
  qpeft evaluate --config $D/evaluate-dev.yaml
  zero_shot_test gemma3-270m 96
  zero_shot_test smollm2-135m 96
  for method in qpeft_r soft_prompt lora; do tested $method 500; done
  qpeft evaluate --config $D/evaluate-test.yaml
  first_stage
}

# Sourced (`. run.sh`), it only defines the steps above; with arguments it runs one step.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  if [ $# -gt 0 ]; then "$@"; else main; fi
fi
