#!/usr/bin/env bash
# The recipe study (issue 37): Q-PEFT trained on 500 NFCorpus training queries, starting
# from today's recipe (base.yaml) and moving one choice at a time toward the authors'
# (paper.yaml), then the winners combined; LoRA at the same budget. Every run's dev check
# is NDCG@10 on the first 80 dev queries' BM25 top 20. No test query is read here.
#   bash results/nfcorpus/recipe/run.sh           # every run in order, then the report
#   bash results/nfcorpus/recipe/run.sh one NAME  # one run of the table below
# Runs resume from their last checkpoint when re-run; a finished one is skipped.
# NFCorpus is free for academic use (NutritionFacts.org's terms otherwise): only metrics
# and adapter configs are committed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
D=results/nfcorpus/recipe
CONST=(--set train.warmup_ratio=0 --set train.decay=none --set train.embedding_lr=null)
HINGE=(--set loss.kind=pairwise --set loss.pointwise_weight=1)

# The study's runs, in the order `all` trains them: name, then the factor moved.
NAMES=(base gate_off gate_fast lr_3e-3 lr_3e-2 hinge_m0 hinge_m0.5 neg7 doc160 query_label
  qpeft_r_k10 qpeft_r_k20 doc256 qpb1 paper lora lora_3e-3)

flags() {
  case $1 in
    base) ;;
    gate_off) echo --set adapter.hint_gate=false ;;  # ungated, with the paper's prompt
    gate_fast) echo --set train.gate_lr=0.1 --set train.embedding_lr=1e-2 ;;
    lr_3e-3) echo --set train.lr=3e-3 "${CONST[@]}" ;;
    lr_3e-2) echo --set train.lr=3e-2 "${CONST[@]}" ;;
    hinge_m0) echo "${HINGE[@]}" --set loss.margin=0 ;;
    hinge_m0.5) echo "${HINGE[@]}" --set loss.margin=0.5 ;;
    neg7) echo --set train.max_negatives=1 --set loss.in_batch_negatives=6 ;;  # the authors' 7
    doc160) echo --set template.max_doc_tokens=160 ;;
    query_label) ;;  # one flag with a space: set in `one`
    qpeft_r_k10) echo --set adapter.method=qpeft_r ;;
    qpeft_r_k20) echo --set adapter.method=qpeft_r --set adapter.k=20 ;;
    doc256) echo --set template.max_doc_tokens=256 --set template.max_length=420 ;;
    qpb1) echo --set train.queries_per_batch=1 --set loss.in_batch_negatives=0 \
      --set train.epochs=3 --set train.patience=2 ;;
    lora) echo --set adapter.method=lora ;;  # the baseline at the same budget
    lora_3e-3) echo --set adapter.method=lora --set train.lr=3e-3 ;;
    *) echo "run.sh: no run named $1" >&2; return 1 ;;
  esac
}

one() {
  local name=$1 config=base args=()
  [ "$name" = paper ] && config=paper
  [ "$name" = paper ] || read -r -a args <<<"$(flags "$name")"
  # "Query:" for title-like queries, in place of the template's "Question:" (YAML reads \n)
  [ "$name" = query_label ] && args=(--set 'template.question="Query: \n"')
  qpeft train --config $D/$config.yaml --set run.name="$name" "${args[@]}"
}

report() {
  python scripts/recipe_study.py --runs $D/train --paper $D/paper.yaml --out $D
}

all() {
  local name
  for name in "${NAMES[@]}"; do
    one "$name"
  done
  report
}

"${@:-all}"
