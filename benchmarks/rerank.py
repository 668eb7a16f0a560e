"""Reranking throughput: the Ray Data pipeline (`qpeft rerank`) against the in-process
scorer on the same pairs, with 1 actor and with 2 actors.

All three score the same test-split candidates of a prepared directory with the same model
and template. Times are wall-clock from the call to the last score, model loading included
(the pipeline's also include planning, actor start-up, the shard files and the exactly-once
check); Ray itself is started before timing. Prints pairs/s and each pipeline's ratio to
the in-process scorer, and checks that the scores agree.

    python benchmarks/rerank.py --prepared runs/prepare/cranfield --queries 20 --depth 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import torch

from pipelines.ray_setup import RaySection, init_ray
from pipelines.rerank import RerankConfig, rerank
from qpeft import storage
from qpeft.config import AdapterConfig, ModelConfig, TemplateConfig, from_dict
from qpeft.data.runs import read_run
from qpeft.lm.backbone import load_backbone
from qpeft.lm.hardware import detect
from qpeft.scoring.model import QPeftModel
from qpeft.scoring.scorer import score_pairs


def candidates(args) -> list[dict]:
    condition = (pc.field("split") == "test") & (pc.field("rank") <= args.depth)
    rows = storage.read_parquet(Path(args.prepared) / "candidates", filter=condition).to_pylist()
    queries = sorted({r["query_id"] for r in rows})[: args.queries]
    return [r for r in rows if r["query_id"] in set(queries)]


def in_process(args, rows: list[dict]) -> tuple[float, dict]:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    backbone = load_backbone(ModelConfig(name=args.model))
    template = TemplateConfig(max_doc_tokens=args.max_doc_tokens)
    model = QPeftModel.build(backbone, template, AdapterConfig(method="zero_shot"))
    scores = score_pairs(model, [r["query"] for r in rows], [r["text"] for r in rows])
    seconds = time.perf_counter() - start
    return seconds, {(r["query_id"], r["doc_id"]): s for r, s in zip(rows, scores, strict=True)}


def pipeline(args, out: str, actors: int) -> tuple[float, dict]:
    cfg = from_dict(
        RerankConfig,
        {
            "model": {"name": args.model},
            "template": {"max_doc_tokens": args.max_doc_tokens},
            "rerank": {
                "prepared_dir": args.prepared,
                "depth": args.depth,
                "max_queries": args.queries,
                "name": f"actors-{actors}",
                "output_dir": out,
                "num_actors": actors,
                "cpus_per_actor": 1.0 if actors == 1 else 0.5,
                "threads_per_actor": args.threads // actors,
                "rows_per_batch": args.rows_per_batch,
            },
            "ray": {"num_cpus": 2},
        },
    )
    start = time.perf_counter()
    rerank(cfg)
    seconds = time.perf_counter() - start
    run = read_run(Path(out) / f"actors-{actors}")
    return seconds, {(q, d): s for q, docs in run.items() for d, s in docs.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; tests parse the lines the docs show with it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", default="runs/prepare/cranfield")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--max-doc-tokens", type=int, default=160)
    parser.add_argument("--rows-per-batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(f"machine: {detect().describe()}, {torch.get_num_threads()} torch threads", flush=True)

    rows = candidates(args)
    init_ray(RaySection(num_cpus=2))
    base_seconds, base = in_process(args, rows)
    results = {"in-process scorer": (base_seconds, base)}
    with tempfile.TemporaryDirectory() as out:
        for actors in (1, 2):
            results[f"Ray Data, {actors} actor{'s' * (actors > 1)}"] = pipeline(args, out, actors)
    n = len(rows)
    print(f"\n{n} pairs ({args.queries} queries x top-{args.depth}), {args.threads} threads\n")
    print("| | seconds | pairs/s | vs in-process | max score diff |\n|---|---|---|---|---|")
    for name, (seconds, scores) in results.items():
        assert scores.keys() == base.keys(), name
        diff = max(abs(scores[k] - base[k]) for k in base)
        print(
            f"| {name} | {seconds:.1f} | {n / seconds:.2f} | "
            f"{base_seconds / seconds:.2f}x | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
