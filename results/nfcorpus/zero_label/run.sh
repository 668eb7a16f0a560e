#!/usr/bin/env bash
# Issue 39: adapters trained on pseudo-queries alone, NFCorpus read as a corpus with no
# training judgments (configs/prepare-zero-label.yaml: only the test split is read). Each
# kind gets its own prepared folder; every adapter trains on 500 of its pseudo_train
# queries with configs/cpu-gemma3.yaml's recipe, untouched, and checks on 80 pseudo_dev
# queries. Then each reranks the 323 test queries' hybrid top 20, beside zero-shot and the
# supervised adapter (results/nfcorpus/recipe, trained on the judged train split).
#   bash results/nfcorpus/zero_label/run.sh report   # once every adapter is trained
#   bash results/nfcorpus/zero_label/run.sh prepare title      # then: train title, ...
#   bash results/nfcorpus/zero_label/run.sh all
# NFCorpus is free for academic use (NutritionFacts.org's terms otherwise): only metrics
# and configs are committed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
D=results/nfcorpus/zero_label
P=runs/prepare/zero-label

# prepare KIND: the zero-label folder with pseudo-queries of KIND (title, generate, both).
prepare() {
  local kind=$1 sets=()
  sets+=(prepare.output_dir=$P-$kind prepare.pseudo_queries.kind="$kind")
  [ "$kind" = title ] || sets+=(prepare.pseudo_queries.docs=600)
  # `both` drafts titles and generated queries for the same 600 documents as `generate`:
  # its folder is claimed for its own configuration, then given generate's shards (same
  # documents, seed and shards), so that prepare resumes past them instead of writing them
  # again.
  if [ "$kind" = both ] && [ -d $P-generate/pseudo_generated ] && [ ! -d $P-both ]; then
    claim "${sets[@]}"
    cp -r $P-generate/pseudo_generated $P-both/
  fi
  local args=()
  for s in "${sets[@]}"; do args+=(--set "$s"); done
  qpeft prepare --config configs/prepare-zero-label.yaml "${args[@]}"
  cp $P-$kind/counts.json $D/counts-$kind.json
}

# claim KEY=VALUE...: stamp the prepared folder for that configuration, as prepare would.
claim() {
  python - "$@" <<'PY'
import sys
from pipelines.prepare import PrepareConfig, stamp_settings
from qpeft import storage
from qpeft.artifacts import PreparedData, digest
from qpeft.config import load_config
section = load_config(PrepareConfig, "configs/prepare-zero-label.yaml", sys.argv[1:]).prepare
settings = stamp_settings(section)
PreparedData(storage.absolute(section.output_dir)).claim(digest(settings), settings)
PY
}

train() {
  local kind=$1
  qpeft train --config configs/cpu-gemma3.yaml --set data.prepared_dir=$P-$kind \
    --set run.name="$kind" --set run.storage_path=$D/train \
    --set train.max_train_queries=500 --set train.dev_max_queries=80 \
    --set train.dev_depth=20 --set train.checkpoint_every=50
}

# report: the test rerank (rerank-test.yaml: zero-shot, the supervised adapter and both's last
# checkpoint in one job), then the report. Fusion weights come from each adapter's own dev
# check (pseudo_dev; the supervised one: judged dev), and zero-shot's from the step-0 check
# of the title run, which is zero-shot exactly. A kind whose dev check kept the untrained
# start is zero-shot exactly (the gate is shut), so its run is zero-shot's, fused with its
# own weight; one that kept a trained adapter must be added to rerank-test.yaml.
report() {
  local name last weights=() runs=()
  last=$(ls -d $D/train/both/checkpoint_*/ | tail -1)
  rm -rf $D/train/both/last_adapter && cp -r "${last}adapter" $D/train/both/last_adapter
  qpeft rerank --config $D/rerank-test.yaml
  weights+=("zero_shot=$(weight $D/train/title 0)")
  weights+=("supervised=$(weight results/nfcorpus/recipe/train/best_qpeft_a-all)")
  weights+=("both_last=$(weight $D/train/both last)")
  for name in title generate both; do
    weights+=("$name=$(weight $D/train/$name)")
    if [ "$(kept_epoch $D/train/$name)" = 0 ]; then
      runs+=("$name=$D/runs/zero_shot")
    else
      runs+=("$name=$D/runs/$name")  # trained: rerank it in rerank-test.yaml first
    fi
  done
  python scripts/depth_study.py --prepared $P-title --split test --depths 20 --out $D/test \
    --weights "${weights[@]}" --against supervised \
    --runs first_stage=$D/runs/zero_shot zero_shot=$D/runs/zero_shot \
    supervised=$D/runs/supervised "${runs[@]}" both_last=$D/runs/both_last
  python scripts/zero_label_report.py --study $D --kinds title generate both
}

kept_epoch() {
  python -c "import json,sys; print(json.load(open(sys.argv[1]))['best_epoch'])" "$1/metrics.json"
}

# weight RUN [STEP | last]: the fusion weight the run's dev check chose for its kept adapter
# (or at STEP, or at its last check).
weight() {
  python - "$@" <<'PY'
import json, sys
metrics = json.load(open(f"{sys.argv[1]}/metrics.json"))
history = metrics["history"]
if len(sys.argv) > 2 and sys.argv[2] == "last":
    entry = history[-1]
elif len(sys.argv) > 2:
    entry = next(h for h in history if h["step"] == int(sys.argv[2]))
else:
    entry = next(h for h in history if h["epoch"] == metrics["best_epoch"])
print(entry["fusion_weight"])
PY
}

all() {
  for kind in title generate both; do prepare $kind; train $kind; done
  report
}

"${@:-all}"
