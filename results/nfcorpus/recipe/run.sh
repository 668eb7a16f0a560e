#!/usr/bin/env bash
# The recipe study (issue 37): Q-PEFT trained on 500 NFCorpus training queries, starting
# from today's recipe (base.yaml) and moving one choice at a time toward the authors'
# (paper.yaml), then the winners combined; LoRA at the same budget. Every run's dev check
# is NDCG@10 on the first 80 dev queries' BM25 top 20. No test query is read here.
#   bash results/nfcorpus/recipe/run.sh           # every run in order, then the report
#   bash results/nfcorpus/recipe/run.sh one NAME  # one run of the table below
#   bash results/nfcorpus/recipe/run.sh full best_qpeft_a     # a winner on all queries
#   bash results/nfcorpus/recipe/run.sh final best_qpeft_a best_qpeft_r best_lora  # test once
#   bash results/nfcorpus/recipe/run.sh label     # "Query:" zero-shot on two collections' dev
# Runs resume from their last checkpoint when re-run; a finished one is skipped.
# NFCorpus is free for academic use (NutritionFacts.org's terms otherwise): only metrics
# and adapter configs are committed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
D=results/nfcorpus/recipe
CONST=(--set train.warmup_ratio=0 --set train.decay=none --set train.embedding_lr=null)
HINGE=(--set loss.kind=pairwise --set loss.pointwise_weight=1)
H=runs/prepare/nfcorpus-hybrid

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
    # The winners, each with "Query:" (set in `one`), the one change dev preferred:
    best_qpeft_a) ;;  # = query_label: no other step toward the paper beat the base recipe
    best_qpeft_r) echo --set adapter.method=qpeft_r ;;  # k 10: k 20 tied it (0.3098 vs 0.3097)
    best_lora) echo --set adapter.method=lora ;;
    # After the winners: Q-PEFT-R's winner on the candidates it is tested on (hybrid groups
    # and a hybrid dev check, where the study used BM25's), for two epochs.
    hybrid_2ep) echo --set adapter.method=qpeft_r --set data.prepared_dir=$H --set train.epochs=2 ;;
    *) echo "run.sh: no run named $1" >&2; return 1 ;;
  esac
}

# one NAME [--set ...]: the run NAME of the table above; further flags come last and win.
one() {
  local name=$1 config=base args=()
  shift
  [ "$name" = paper ] && config=paper
  [ "$name" = paper ] || read -r -a args <<<"$(flags "$name")"
  # "Query:" for title-like queries, in place of the template's "Question:" (YAML reads \n)
  case $name in query_label | best_* | hybrid_*) args+=(--set 'template.question="Query: \n"') ;; esac
  qpeft train --config $D/$config.yaml --set run.name="$name" "${args[@]}" "$@"
}

# The winners at full scale: full NAME trains run NAME's recipe on every training query
# (2,385 groups) into train/NAME-all; nothing else changes.
full() {
  one "$1" --set train.max_train_queries=null --set run.name="$1-all"
}

# Test once, over the hybrid first stage's top 20 (the depth NFCorpus dev chose for the
# rerankers in results/nfcorpus/depth): each full-scale adapter reranks every dev query
# (fusion weight chosen there) and every test query; scripts/depth_study.py then reports
# raw and fused systems with paired t-tests, zero-shot's depth-100 dev rerank and depth-20
# test rerank coming from results/nfcorpus/depth.
Z=results/nfcorpus/depth/runs
rerank_full() {
  local name=$1 split=$2 method
  method=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['method'])" \
    $D/train/$name-all/adapter/adapter_config.json)
  qpeft rerank --config results/nfcorpus/depth/rerank.yaml --set rerank.split="$split" \
    --set rerank.depth=20 --set rerank.method="$method" --set rerank.output_dir=$D/runs \
    --set rerank.adapter_dir=$D/train/$name-all/adapter --set rerank.name="$split-$name-all"
}

# "Query:" against "Question:" for zero-shot on every dev query of NFCorpus and of Cranfield
# (each one's hybrid top 20): is the label a default, or NFCorpus's? The "Question:" runs
# are results/nfcorpus/depth's and results/cranfield/first_stage's.
label() {
  local query=(--set 'template.question="Query: \n"' --set rerank.output_dir=$D/label/runs)
  local cranfield=results/cranfield/first_stage/runs/dev-zero_shot-hybrid
  qpeft rerank --config results/nfcorpus/depth/rerank.yaml --set rerank.depth=20 \
    --set rerank.name=dev-nfcorpus-query "${query[@]}"
  qpeft rerank --config configs/rerank-cranfield.yaml --set rerank.method=zero_shot \
    --set rerank.adapter_dir=null --set rerank.prepared_dir=runs/prepare/cranfield-hybrid \
    --set rerank.split=dev --set rerank.name=dev-cranfield-query "${query[@]}"
  python scripts/depth_study.py --prepared $H --split dev --depths 20 --out $D/label/nfcorpus \
    --runs first_stage=$Z/dev-zero_shot zero_shot=$Z/dev-zero_shot \
    query_label=$D/label/runs/dev-nfcorpus-query
  python scripts/depth_study.py --prepared runs/prepare/cranfield-hybrid --split dev \
    --depths 20 --out $D/label/cranfield --runs first_stage=$cranfield zero_shot=$cranfield \
    query_label=$D/label/runs/dev-cranfield-query
}

# final NAME...: the named full-scale runs on dev, then on test, then the two reports,
# each system also tested against LoRA's when best_lora is among them.
final() {
  local name split dev=() test=() against=()
  for name in "$@"; do
    for split in dev test; do rerank_full "$name" $split; done
    dev+=("$name=$D/runs/dev-$name-all")
    test+=("$name=$D/runs/test-$name-all")
    [ "$name" = best_lora ] && against=(--against best_lora)
  done
  python scripts/depth_study.py --prepared $H --split dev --depths 20 --out $D/final/dev \
    --runs first_stage=$Z/dev-zero_shot zero_shot=$Z/dev-zero_shot "${dev[@]}" "${against[@]}"
  python scripts/depth_study.py --prepared $H --split test --depths 20 --out $D/final/test \
    --fusion-from $D/final/dev/study.json "${against[@]}" \
    --runs first_stage=$Z/test-zero_shot-d20 zero_shot=$Z/test-zero_shot-d20 "${test[@]}"
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
