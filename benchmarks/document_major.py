"""Document-major against query-major scoring, measured side by side in one process.

Both run `qpeft.scoring.scorer.score_layouts` on the same pairs and must agree on every score:

* **query-major** (the scorer before document-major scoring): batches of pairs sorted by
  length, the common prefix `<bos> P "Passage: "` computed once per batch, every pair's
  document computed again for each of its queries;
* **document-major**: each document's pairs batched together, its prefix
  `<bos> P "Passage: " d " \\n"` computed once per batch and every pair's suffix (hints,
  "Question:", the label) run on its keys and values.

The pairs are every candidate pair of `--docs` documents drawn at random (seeded) from a
prepared directory's top-`--depth` candidates of one split, so the sample keeps the
split's pairs per document. The script prints pairs/s of each layout, their ratio, and the
ratio of the linear-layer FLOPs each computes (padding included, from the batches'
shapes): the speed-up computing less can buy at equal efficiency, the ceiling the
measured ratio is held against. It also prints each layout's GFLOP/s against a float
matmul peak measured in the same run.

    python benchmarks/document_major.py --prepared runs/prepare/nfcorpus-hybrid --depth 20
    python benchmarks/document_major.py --prepared runs/prepare/nfcorpus-hybrid --depth 100
    python benchmarks/document_major.py --prepared runs/prepare/cranfield-hybrid --depth 20
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.compute as pc
import torch
from scoring import PeakMemory, matmul_peak, non_embedding_params  # benchmarks/ is sys.path[0]

from qpeft.artifacts import PreparedData
from qpeft.config import AdapterConfig, ModelConfig, TemplateConfig
from qpeft.lm.backbone import load_backbone
from qpeft.lm.hardware import detect
from qpeft.lm.template import PairLayout
from qpeft.scoring.model import QPeftModel, describe_prefix_budget
from qpeft.scoring.scorer import document_batches, score_layouts


def sampled_pairs(
    prepared: str, split: str, depth: int, n_docs: int, seed: int
) -> tuple[list[tuple[str, str]], dict]:
    """Every top-`depth` candidate pair of `n_docs` random documents of `split`, and the
    split's own pairs-per-document figures."""
    data = PreparedData(prepared)
    condition = (pc.field("rank") <= depth) & (pc.field("split") == split)
    table = data.table(data.CANDIDATES, ["query", "doc_id", "text"], condition)
    rows = table.to_pylist()
    by_doc: dict[str, list[dict]] = {}
    for row in rows:
        by_doc.setdefault(row["doc_id"], []).append(row)
    chosen = random.Random(seed).sample(sorted(by_doc), min(n_docs, len(by_doc)))
    pairs = [(r["query"], r["text"]) for d in chosen for r in by_doc[d]]
    split_stats = {
        "split_pairs": len(rows),
        "split_documents": len(by_doc),
        "split_pairs_per_document": len(rows) / max(1, len(by_doc)),
    }
    return pairs, split_stats


def computed_flops(
    batches: list[list[int]],
    layouts: list[PairLayout],
    common: int,
    per_token: int,
    head: int,
) -> int:
    """Linear-layer FLOPs a layout computes over its batches, padding included: each
    distinct document prefix once a batch (at the batch's widest prefix) or, without
    them, the common prefix once a batch; every row's suffix at the batch's widest
    suffix; the LM head at the label positions (attention's own products, a few percent
    here, are left out)."""
    total = 0
    for batch in batches:
        prefix = max(max(layouts[i].document_prefix for i in batch), common)
        suffix = max(len(layouts[i].input_ids) - prefix_of(layouts[i], common) for i in batch)
        if prefix > common:
            total += per_token * len({layouts[i].document_key() for i in batch}) * prefix
        else:
            total += per_token * common
        total += per_token * len(batch) * suffix
        total += head * sum(len(layouts[i].query_ids) + 2 for i in batch)
    return total


def prefix_of(layout: PairLayout, common: int) -> int:
    return max(layout.document_prefix, common)


def discordant_share(queries: list[str], a: list[float], b: list[float]) -> float:
    """Share of one query's candidate pairs that the two score lists order differently
    (ties count as agreeing): how far rounding moves rankings."""
    by_query: dict[str, list[int]] = {}
    for i, query in enumerate(queries):
        by_query.setdefault(query, []).append(i)
    pairs = flips = 0
    for rows in by_query.values():
        for x, i in enumerate(rows):
            for j in rows[x + 1 :]:
                pairs += 1
                flips += (a[i] - a[j]) * (b[i] - b[j]) < 0
    return flips / max(1, pairs)


def timed(run, device: str) -> tuple[list[float], float, float]:
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        scores = run()
        seconds = time.perf_counter() - start
    return scores, seconds, memory.extra_mib


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; tests parse the lines the docs show with it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", required=True, help="a `qpeft prepare` output folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--docs", type=int, default=40, help="documents sampled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--method", default="zero_shot")
    parser.add_argument(
        "--open-gate",
        action="store_true",
        help="open a gated adapter's hint gate so hints are read, as a trained one does",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prefix-token-budget", type=int, default=8192)
    parser.add_argument("--max-doc-tokens", type=int, default=96)
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument("--json-out")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(f"machine: {detect().describe()}, {torch.get_num_threads()} torch threads", flush=True)
    backbone = load_backbone(ModelConfig(name=args.model, dtype=args.dtype))
    template = TemplateConfig(max_doc_tokens=args.max_doc_tokens)
    model = QPeftModel.build(backbone, template, AdapterConfig(method=args.method))
    if args.open_gate and getattr(model.adapter, "gate", None) is not None:
        with torch.no_grad():
            model.adapter.gate.weight.fill_(0.1)
    pairs, split_stats = sampled_pairs(args.prepared, args.split, args.depth, args.docs, args.seed)
    with torch.no_grad():
        model.adapter.eval()
        layouts = model.encode([q for q, _ in pairs], [d for _, d in pairs])
    by_query = [replace(layout, document_prefix=0) for layout in layouts]
    common = len(model.template.shared_prefix_ids)
    per_token = 2 * non_embedding_params(backbone)
    head = 2 * backbone.hidden_size * backbone.vocab_size
    bs, budget = args.batch_size, args.prefix_token_budget
    flops = {
        "query_major": computed_flops(
            list(document_batches(by_query, bs, budget)), by_query, common, per_token, head
        ),
        "document_major": computed_flops(
            list(document_batches(layouts, bs, budget)), layouts, common, per_token, head
        ),
    }
    runs = {
        "query_major": lambda: score_layouts(model, by_query, bs, True, budget),
        "document_major": lambda: score_layouts(model, layouts, bs, True, budget),
    }
    warm = layouts[: 2 * bs]
    score_layouts(model, warm, bs, True, budget)  # untimed: first-call allocations
    peak = matmul_peak("cpu", backbone.dtype, args.peak_size)
    print(describe_prefix_budget(backbone, budget))
    results = {}
    for name, run in runs.items():
        scores, seconds, memory = timed(run, "cpu")
        results[name] = {
            "scores": scores,
            "seconds": seconds,
            "pairs_per_s": len(layouts) / seconds,
            "gflops": flops[name] / seconds / 1e9,
            "peak_rss_growth_mib": memory,
        }
    query, document = results["query_major"], results["document_major"]
    ceiling = flops["query_major"] / flops["document_major"]
    speedup = document["pairs_per_s"] / query["pairs_per_s"]
    diff = max(abs(a - b) for a, b in zip(query["scores"], document["scores"], strict=True))
    flips = discordant_share([q for q, _ in pairs], query["scores"], document["scores"])
    summary = {
        "machine": f"{detect().describe()}, {torch.get_num_threads()} threads",
        "model": backbone.name,
        "dtype": str(backbone.dtype).removeprefix("torch."),
        "method": args.method,
        "prepared": args.prepared,
        "split": args.split,
        "depth": args.depth,
        "pairs": len(layouts),
        "documents": len({layout.document_key() for layout in layouts}),
        **split_stats,
        "batch_size": bs,
        "prefix_token_budget": budget,
        "matmul_peak_gflops": peak,
        **{f"{name}_{k}": v for name, r in results.items() for k, v in r.items() if k != "scores"},
        "speedup": speedup,
        "flop_ratio_ceiling": ceiling,
        "fraction_of_ceiling": speedup / ceiling,
        "max_abs_score_diff": diff,
        "discordant_candidate_pairs": flips,
    }
    print(
        f"{summary['pairs']} pairs of {summary['documents']} documents "
        f"({summary['pairs'] / summary['documents']:.2f} a document; the split has "
        f"{split_stats['split_pairs_per_document']:.2f}), depth {args.depth}, "
        f"{backbone.name} ({summary['dtype']}), {args.method}"
    )
    print(f"matmul peak ({args.peak_size}^3): {peak:.1f} GFLOP/s")
    for name, r in results.items():
        print(
            f"{name:>15}: {r['pairs_per_s']:7.2f} pairs/s  {r['gflops']:7.1f} GFLOP/s "
            f"({r['gflops'] / peak:5.1%} of peak)  "
            f"peak RSS growth {r['peak_rss_growth_mib']:.0f} MiB"
        )
    print(
        f"document-major / query-major: {speedup:.2f}x; FLOP ceiling {ceiling:.2f}x "
        f"({speedup / ceiling:.0%} of it); max |score diff| {diff:.2e}; candidate pairs "
        f"of a query ordered differently: {flips:.2%}"
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
