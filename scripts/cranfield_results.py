"""Rerank a prepared split with BM25, zero-shot and trained adapters; NDCG@10 with paired
t-tests. The quality evidence in docs/results.md comes from this script.

    python scripts/cranfield_results.py --prepared runs/prepare/cranfield \\
        --adapter qpeft_a=runs/train/cranfield-qpeft-a/adapter ... --json-out results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow.dataset as pads
from scipy import stats

from qpeft.backbone import load_backbone
from qpeft.checkpoint import load_adapter, read_adapter_config
from qpeft.config import AdapterConfig, ModelConfig, TemplateConfig, from_dict
from qpeft.metrics import per_query
from qpeft.model import QPeftModel
from qpeft.scoring import score_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", default="runs/prepare/cranfield")
    parser.add_argument("--split", default="test")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json-out")
    args = parser.parse_args()

    root = Path(args.prepared)
    rows = [
        r
        for r in pads.dataset(str(root / "candidates")).to_table().to_pylist()
        if r["split"] == args.split and r["rank"] <= args.depth
    ]
    qrels: dict[str, dict[str, int]] = {}
    for r in pads.dataset(str(root / "qrels")).to_table().to_pylist():
        qrels.setdefault(r["query_id"], {})[r["doc_id"]] = r["relevance"]
    runs = {"bm25": {}}
    for r in rows:
        runs["bm25"].setdefault(r["query_id"], {})[r["doc_id"]] = r["first_stage_score"]

    backbone = load_backbone(ModelConfig(name=args.model))
    adapters = dict(item.split("=", 1) for item in args.adapter)
    # Zero-shot uses the trained adapters' template, so every system reads the same input.
    template = TemplateConfig()
    if adapters:
        saved = read_adapter_config(next(iter(adapters.values())))["template"]
        template = from_dict(TemplateConfig, saved, "template")
    models = {"zero_shot": QPeftModel.build(backbone, template, AdapterConfig(method="zero_shot"))}
    models.update({name: load_adapter(path, backbone) for name, path in adapters.items()})
    for name, model in models.items():
        start = time.perf_counter()
        scores = score_pairs(
            model, [r["query"] for r in rows], [r["text"] for r in rows], args.batch_size
        )
        runs[name] = {}
        for r, s in zip(rows, scores, strict=True):
            runs[name].setdefault(r["query_id"], {})[r["doc_id"]] = s
        print(f"{name}: {len(rows)} pairs in {time.perf_counter() - start:.0f}s", flush=True)

    results = {n: per_query(qrels, run, {"ndcg_cut.10"}) for n, run in runs.items()}
    queries = sorted(results["bm25"])
    ndcg = {n: [results[n][q]["ndcg_cut_10"] for q in queries] for n in runs}
    table = {}
    for name, values in ndcg.items():
        row = {"ndcg@10": sum(values) / len(values)}
        for base in ("bm25", "zero_shot"):
            if name != base:
                row[f"p_vs_{base}"] = float(stats.ttest_rel(values, ndcg[base]).pvalue)
        table[name] = row
    print(f"\n{args.split} split: {len(queries)} queries, top-{args.depth} BM25 candidates\n")
    print("| system | NDCG@10 | p vs BM25 | p vs zero-shot |\n|---|---|---|---|")
    for name, row in table.items():
        p1, p2 = row.get("p_vs_bm25"), row.get("p_vs_zero_shot")
        print(
            f"| {name} | {row['ndcg@10']:.4f} | {'' if p1 is None else f'{p1:.3f}'} | "
            f"{'' if p2 is None else f'{p2:.3f}'} |"
        )
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "split": args.split,
                    "depth": args.depth,
                    "queries": len(queries),
                    "table": table,
                    "per_query": ndcg,
                    "query_ids": queries,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
