#!/usr/bin/env bash
# Cranfield, BM25 top 20, fp32 on a 2-core CPU: BM25; for Gemma 3 270M zero-shot (its prompt
# and document length chosen on dev), the soft prompt, Q-PEFT-R and Q-PEFT-A (the paper's pairwise loss, and
# listwise without the pointwise term); for SmolLM2-135M zero-shot and Q-PEFT-A listwise (the
# loss dev chose for Gemma). Every LM run raw and fused with BM25, fusion weights chosen on
# dev, never on test; through the project's own commands.
# Needs: qpeft prepare --config configs/prepare-cranfield.yaml, and for `sweep_best` the sweep
# (qpeft tune --config results/cranfield/sweep/qpeft-a-lr.yaml). About 2.5 hours for Gemma
# and 30 minutes for SmolLM2 here. `bash run.sh smollm2-135m` runs one backbone's part only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
D=results/cranfield/trained

bm25() {
  for split in dev test; do
    qpeft rerank --config $D/rerank.yaml --set rerank.split=$split --set rerank.method=first_stage \
      --set rerank.name=$split-bm25
  done
}

# Zero-shot: its fusion weight is chosen on dev, and the test rerank reads it from there.
zero_shot() {
  local M=$1
  qpeft rerank --config $D/rerank.yaml --set model.name=$M --set rerank.split=dev \
    --set rerank.name=dev-$M-zero_shot --set rerank.fusion=choose
  qpeft rerank --config $D/rerank.yaml --set model.name=$M --set rerank.split=test \
    --set rerank.name=test-$M-zero_shot --set rerank.fusion=$D/runs/dev-$M-zero_shot/fusion.json
}

# Zero-shot's prompt and document length, chosen on dev: the plain prompt and the UPR
# instruction (Sachan et al. 2022), documents cut at 96 or 160 tokens. plain-d96 is
# dev-$M-zero_shot above; evaluate-zero-shot-dev.yaml compares the four.
UPR_PROMPT="Please write a question based on this passage."
zero_shot_choices() {
  local M=$1
  qpeft rerank --config $D/rerank.yaml --set model.name=$M --set rerank.split=dev \
    --set template.prompt="$UPR_PROMPT" --set rerank.name=dev-$M-zero_shot-upr-d96
  qpeft rerank --config $D/rerank.yaml --set model.name=$M --set rerank.split=dev \
    --set template.max_doc_tokens=160 --set rerank.name=dev-$M-zero_shot-plain-d160
  qpeft rerank --config $D/rerank.yaml --set model.name=$M --set rerank.split=dev \
    --set template.prompt="$UPR_PROMPT" --set template.max_doc_tokens=160 \
    --set rerank.name=dev-$M-zero_shot-upr-d160
  qpeft evaluate --config $D/evaluate-zero-shot-dev.yaml
}

# The zero-shot setting dev chose (zero_shot_dev/report.md: the plain prompt with 160-token
# documents, 0.3381 against 0.3358 for the trained methods' 96), fused and tested like the rest.
zero_shot_chosen() {
  local M=$1 name=zero_shot-plain-d160
  qpeft rerank --config $D/rerank.yaml --set model.name=$M --set rerank.split=dev \
    --set template.max_doc_tokens=160 --set rerank.name=dev-$M-$name --set rerank.fusion=choose
  qpeft rerank --config $D/rerank.yaml --set model.name=$M --set rerank.split=test \
    --set template.max_doc_tokens=160 --set rerank.name=test-$M-$name \
    --set rerank.fusion=$D/runs/dev-$M-$name/fusion.json
}

# One trained method: `run` is the method, with `_listwise` for the listwise loss without the
# pointwise term (soft prompt, Q-PEFT-R and LoRA use the loss dev chose for Q-PEFT-A,
# listwise).
# The adapter's fusion weight is chosen on dev and read from there for test.
trained() {
  local M=$1 run=$2 method=${2%_listwise} loss=()
  case $run in *_listwise|soft_prompt|qpeft_r|lora)
    loss=(--set loss.kind=listwise --set loss.pointwise_weight=0) ;; esac
  local name=$M-${run//_/-}
  qpeft train --config $D/train.yaml --set model.name=$M --set adapter.method=$method \
    --set run.name=$name "${loss[@]}"
  for split in dev test; do
    local fusion=choose
    [ $split = test ] && fusion=$D/runs/dev-$M-$run/fusion.json
    qpeft rerank --config $D/rerank.yaml --set model.name=$M --set rerank.method=$method \
      --set rerank.adapter_dir=$D/train/$name/adapter --set rerank.split=$split \
      --set rerank.name=$split-$M-$run --set rerank.fusion=$fusion
  done
}

# The best adapter of the learning-rate sweep (results/cranfield/sweep/qpeft-a-lr.yaml,
# SmolLM2), reranked like the runs above.
sweep_best() {
  local A=results/cranfield/sweep/qpeft-a-lr/best_adapter
  for split in dev test; do
    local fusion=choose
    [ $split = test ] && fusion=$D/runs/dev-smollm2-135m-qpeft_a_sweep/fusion.json
    qpeft rerank --config $D/rerank.yaml --set rerank.method=qpeft_a --set rerank.adapter_dir=$A \
      --set rerank.split=$split --set rerank.name=$split-smollm2-135m-qpeft_a_sweep \
      --set rerank.fusion=$fusion
  done
}

main() {
  local backbones=("$@") M run
  [ ${#backbones[@]} -eq 0 ] && backbones=(gemma3-270m smollm2-135m)
  bm25
  for M in "${backbones[@]}"; do
    zero_shot "$M"
    trained "$M" qpeft_a_listwise
    if [ "$M" = gemma3-270m ]; then
      zero_shot_choices "$M"
      zero_shot_chosen "$M"
      # lora runs the same way (`trained "$M" lora`); not yet reported for Gemma.
      for run in qpeft_a qpeft_r soft_prompt; do trained "$M" $run; done
    fi
  done
  sweep_best
  qpeft evaluate --config $D/evaluate-dev.yaml
  qpeft evaluate --config $D/evaluate-test.yaml
}

# Sourced (`. run.sh`), it only defines the steps above.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
