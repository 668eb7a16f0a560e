#!/usr/bin/env bash
# The demo's training recipe on NFCorpus dev (issue 38): 160 training queries (20 steps of 8),
# the demo's dev check, one variant at a time; `bash run.sh NAME` runs one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
D=results/nfcorpus/demo_recipe
one() {
  local name=$1; shift
  qpeft train --config $D/train.yaml --set run.name="$name" "$@"
}
base() { one base; }
# The gate opens at gate_lr per step at most: 20 steps at 1e-2 leave tanh(g) near 0.1.
gate_fast() { one gate_fast --set train.gate_lr=0.1 --set train.embedding_lr=1.0e-2; }
gate_fast_lr3() {
  one gate_fast_lr3 --set train.gate_lr=0.1 --set train.embedding_lr=1.0e-2 --set train.lr=3.0e-3
}
# Half the queries per step, twice the steps for the same pairs.
qpb2() { one qpb2 --set train.queries_per_batch=2; }
if [ $# -gt 0 ]; then "$@"; else base; gate_fast; gate_fast_lr3; qpb2; fi
