"""Peak memory per Ray Train worker, one pass vs token-budget micro-batches, side by side.

Runs `qpeft train` with a config (default `configs/cpu-smollm2.yaml`, 2 CPU workers) for a
few steps on two collections: the prepared Cranfield, and a generated long one built from
it through `qpeft prepare` on local JSONL/TREC files (queries of ~400 tokens, documents of
~1,000 tokens: several Cranfield texts joined). Each collection is trained twice: with the
whole step in one pass (`train.micro_batch_tokens` huge: what training did before) and
with the default budget. Prints each worker's peak RSS and training pairs/s.

    python benchmarks/train_memory.py --prepared runs/prepare/cranfield [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import pyarrow.dataset as pads
import torch

from pipelines.prepare import PrepareConfig, prepare
from pipelines.train import TrainRunConfig, train
from qpeft.config import from_dict, load_config
from qpeft.lm.hardware import detect
from qpeft.training.loop import TrainSettings

ONE_PASS = 10**9


def write_long_collection(prepared: str, out: Path, seed: int = 0) -> dict:
    """Local files whose queries join ~20 Cranfield queries and whose documents join ~6
    Cranfield documents; qrels keep each query's first source query's judgments."""
    rng = random.Random(seed)

    def rows(name: str) -> list[dict]:
        return pads.dataset(f"{prepared}/{name}", format="parquet").to_table().to_pylist()

    corpus, queries, qrels = rows("corpus"), rows("queries"), rows("qrels")
    text_of = {d["doc_id"]: f"{d['title']}\n{d['text']}" for d in corpus}
    ids = sorted(text_of)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w") as f:
        for doc_id in ids:
            parts = [text_of[doc_id]] + [text_of[i] for i in rng.sample(ids, 5)]
            f.write(json.dumps({"id": doc_id, "text": " ".join(parts)}) + "\n")
    with open(out / "queries.jsonl", "w") as f:
        for q in queries:
            parts = [q["text"]] + [o["text"] for o in rng.sample(queries, 19)]
            f.write(json.dumps({"id": q["query_id"], "text": " ".join(parts)}) + "\n")
    (out / "qrels.txt").write_text(
        "".join(f"{r['query_id']} 0 {r['doc_id']} {r['relevance']}\n" for r in qrels)
    )
    return {
        k: str(out / f)
        for k, f in (
            ("corpus", "corpus.jsonl"),
            ("queries", "queries.jsonl"),
            ("qrels", "qrels.txt"),
        )
    }


def run(config: str, prepared: str, budget: int, steps: int, storage: str, name: str) -> dict:
    cfg = load_config(
        TrainRunConfig,
        config,
        [
            f"data.prepared_dir={prepared}",
            f"train.micro_batch_tokens={budget}",
            f"train.max_steps={steps}",
            "train.checkpoint_every=1000000",
            "train.dev_max_queries=4",
            f"run.name={name}",
            f"run.storage_path={storage}",
            "run.max_failures=0",
        ],
    )
    return train(cfg)["history"][-1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; tests parse the lines the docs show with it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", default="runs/prepare/cranfield")
    parser.add_argument("--config", default="configs/cpu-smollm2.yaml")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--skip-one-pass", action="store_true", help="measure the default budget only"
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(f"machine: {detect().describe()}, {torch.get_num_threads()} torch threads", flush=True)
    default_budget = TrainSettings().micro_batch_tokens
    modes = [(f"{default_budget}-token", default_budget)]
    if not args.skip_one_pass:
        modes.insert(0, ("one pass", ONE_PASS))
    with tempfile.TemporaryDirectory() as tmp:
        files = write_long_collection(args.prepared, Path(tmp) / "files")
        long_dir = str(Path(tmp) / "long")
        counts = prepare(
            from_dict(
                PrepareConfig,
                {
                    "prepare": {"output_dir": long_dir, "source": files},
                    "model": {"name": "smollm2-135m"},
                    "ray": {"num_cpus": 2},
                },
            )
        )
        print(
            f"long collection: {counts['documents']} documents, {counts['queries']} queries, "
            f"longest query {counts['query_lengths']['longest_query_tokens']} tokens"
        )
        for label, prepared in (("cranfield", args.prepared), ("long", long_dir)):
            for mode, budget in modes:
                name = f"{label}-{budget}"
                last = run(args.config, prepared, budget, args.steps, f"{tmp}/train", name)
                rss = ", ".join(f"{m / 1024:.2f}" for m in last["peak_rss_mib"])
                print(
                    f"{label:9s} {mode:11s} micro-batches: peak RSS per worker {rss} GiB, "
                    f"{last['train_pairs_per_s']:.2f} training pairs/s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
