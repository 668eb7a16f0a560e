#!/usr/bin/env bash
# Issue 39 on Cranfield: Q-PEFT-A trained on title pseudo-queries alone (500 of them,
# configs/cpu-gemma3.yaml's recipe untouched, dev check on 80 pseudo_dev queries), against
# zero-shot on the 45 test queries. `train judged supervised` trains the same recipe on the
# judged training queries, to compare with (not run in issue 39's session, for time).
#   bash results/cranfield/zero_label/run.sh            # prepare, train, report
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
D=results/cranfield/zero_label
P=runs/prepare/cranfield-zero-label
W=results/nfcorpus/zero_label/run.sh

prepare() {
  qpeft prepare --config $D/prepare.yaml
  cp $P/counts.json $D/counts-title.json
}

# train QUERIES NAME: on pseudo-queries (500 of them) or on the judged ones (all of them).
train() {
  qpeft train --config configs/cpu-gemma3.yaml --set data.prepared_dir=$P \
    --set data.queries="$1" --set run.name="$2" --set run.storage_path=$D/train \
    --set train.max_train_queries=500 --set train.dev_max_queries=80 \
    --set train.dev_depth=20 --set train.checkpoint_every=50
}

# report: title_last is the training's last checkpoint, whatever its dev check said (a
# diagnostic of the pseudo dev check's choice, as on NFCorpus).
report() {
  local last
  last=$(ls -d $D/train/title/checkpoint_*/ | tail -1)
  rm -rf $D/train/title/last_adapter && cp -r "${last}adapter" $D/train/title/last_adapter
  qpeft rerank --config $D/rerank-test.yaml
  python scripts/depth_study.py --prepared $P --split test --depths 20 --out $D/test \
    --weights "zero_shot=$(bash $W weight $D/train/title 0)" \
    "title=$(bash $W weight $D/train/title)" \
    "title_last=$(bash $W weight $D/train/title last)" \
    --runs first_stage=$D/runs/zero_shot zero_shot=$D/runs/zero_shot title=$D/runs/title \
    title_last=$D/runs/title_last
  python scripts/zero_label_report.py --study $D --kinds title
}

all() { prepare; train pseudo title; report; }

"${@:-all}"
