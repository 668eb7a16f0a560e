#!/usr/bin/env bash
# bf16 scoring throughput on one GPU, ours vs the plain loop, with random weights of the
# SmolLM2-135M and LLaMA-2-7B shapes (throughput does not depend on weight values), with
# and without the shared-prefix key/value reuse.
#   bash benchmarks/gpu_scoring.sh CONFIG_DIR PAIRS_JSONL OUT_DIR
# CONFIG_DIR holds SmolLM2's config.json and tokenizer files (no weights needed).
set -euo pipefail
cfg=$1 pairs=$2 out=$3
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
run() {
  name=$1
  shift
  python benchmarks/scoring.py --model "$cfg" --random-weights --device cuda --dtype bfloat16 \
    --pairs-file "$pairs" --peak-size 8192 --json-out "$out/$name.json" "$@"
}
run smollm2_shared --batch-size 32
run smollm2_full --batch-size 32 --no-share-prefix
run 7b_shared --batch-size 16 --shape 7b
run 7b_full --batch-size 16 --shape 7b --no-share-prefix
run 7b_qpeft_a_full --batch-size 16 --shape 7b --method qpeft_a --no-share-prefix
