"""The embedded-default demo: zero-shot SmolLM2 reranking of BM25 candidates on Cranfield.

Offline: Cranfield comes through ir_datasets seeded from a local copy, the model from the
packaged GGUF. Prints NDCG@10 of BM25 and of the reranked run and writes both TREC runs.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytrec_eval

from pipelines.cli import run_step, step_arguments
from qpeft.backbone import load_backbone
from qpeft.config import (
    AdapterConfig,
    ModelConfig,
    ScoringConfig,
    TemplateConfig,
    load_config,
    to_dict,
)
from qpeft.data import irds
from qpeft.data.bm25 import BM25Index
from qpeft.model import QPeftModel
from qpeft.scoring import score_pairs


@dataclass
class DemoSection:
    dataset: str = "cranfield"
    irds_seed: str | None = None
    num_queries: int = 5
    depth: int = 20
    output_dir: str = "runs/demo"


@dataclass
class DemoConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    template: TemplateConfig = field(default_factory=lambda: TemplateConfig(max_doc_tokens=160))
    adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig(method="zero_shot"))
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    demo: DemoSection = field(default_factory=DemoSection)


def write_trec(path: Path, run: dict[str, dict[str, float]], tag: str) -> None:
    lines = []
    for qid, docs in run.items():
        ranked = sorted(docs.items(), key=lambda kv: -kv[1])
        lines += [f"{qid} Q0 {d} {r} {s:.6f} {tag}" for r, (d, s) in enumerate(ranked, 1)]
    path.write_text("\n".join(lines) + "\n")


def ndcg10(qrels: dict, run: dict) -> float:
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"})
    per_query = evaluator.evaluate(run)
    return sum(v["ndcg_cut_10"] for v in per_query.values()) / max(1, len(per_query))


def main(argv: list[str] | None = None) -> None:
    args = step_arguments(__doc__.splitlines()[0]).parse_args(argv)
    cfg = load_config(DemoConfig, args.config, args.overrides)
    out = Path(cfg.demo.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    dataset = irds.load(cfg.demo.dataset, cfg.demo.irds_seed)
    docs = dict(irds.iter_docs(dataset))
    queries = list(irds.iter_queries(dataset))
    qrels: dict[str, dict[str, int]] = {}
    for qid, did, rel in irds.iter_qrels(dataset):
        qrels.setdefault(qid, {})[did] = max(0, rel)
    queries = [q for q in queries if q[0] in qrels][: cfg.demo.num_queries]
    print(f"[demo] {cfg.demo.dataset}: {len(docs)} docs, {len(queries)} queries to rerank")

    hits = BM25Index(list(docs), list(docs.values())).search(
        [q for _, q in queries], cfg.demo.depth
    )
    bm25_run = {qid: dict(row) for (qid, _), row in zip(queries, hits, strict=True)}

    backbone = load_backbone(cfg.model)
    model = QPeftModel.build(backbone, cfg.template, cfg.adapter)
    rerank_run: dict[str, dict[str, float]] = {}
    for n, (qid, text) in enumerate(queries, 1):
        doc_ids = list(bm25_run[qid])
        texts = [docs[d] for d in doc_ids]
        scores = score_pairs(
            model, [text] * len(doc_ids), texts, cfg.scoring.batch_size, cfg.scoring.share_prefix
        )
        rerank_run[qid] = dict(zip(doc_ids, scores, strict=True))
        elapsed = time.perf_counter() - start
        print(f"[demo] query {n}/{len(queries)} reranked ({len(doc_ids)} docs, {elapsed:.0f}s)")

    judged = {qid: qrels[qid] for qid, _ in queries}
    report = {
        "queries": len(queries),
        "depth": cfg.demo.depth,
        "ndcg@10": {
            "bm25": ndcg10(judged, bm25_run),
            cfg.adapter.method: ndcg10(judged, rerank_run),
        },
        "seconds": time.perf_counter() - start,
        "config": to_dict(cfg),
    }
    write_trec(out / "bm25.trec", bm25_run, "bm25")
    write_trec(out / f"{cfg.adapter.method}.trec", rerank_run, cfg.adapter.method)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n| run | NDCG@10 ({len(queries)} queries) |\n|---|---|")
    for name, value in report["ndcg@10"].items():
        print(f"| {name} | {value:.4f} |")
    print(f"\n[demo] runs and report.json in {out.resolve()} ({report['seconds']:.0f}s)")


if __name__ == "__main__":
    sys.exit(run_step(main))
