"""Serving throughput and latency: `@serve.batch` with a token budget against one pair per
batch, at several client concurrencies, on the same machine in one run.

Both settings serve the same model (zero-shot SmolLM2, documents cut at 96 tokens) and get
the same requests: one Cranfield query with `--docs` of its BM25 candidates each. "One pair
per batch" sets the token budget to the longest pair in the requests, so no two pairs ever
share a batch (the equivalent of `max_batch_size=1`).

    python benchmarks/serve.py --prepared runs/prepare/cranfield
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pyarrow.compute as pc
import torch
from ray import serve

from pipelines.ray_setup import RaySection, init_ray
from pipelines.serve import ServeConfig, application
from qpeft import storage
from qpeft.config import AdapterConfig, ModelConfig, TemplateConfig, from_dict
from qpeft.lm.backbone import load_backbone
from qpeft.lm.hardware import detect
from qpeft.scoring.model import QPeftModel

PORT = 8437


def requests_from(prepared: str, n: int, docs: int) -> list[dict]:
    rows = storage.read_parquet(
        Path(prepared) / "candidates", filter=pc.field("rank") <= docs
    ).to_pylist()
    by_query: dict[str, list[dict]] = {}
    for row in rows:
        by_query.setdefault(row["query_id"], []).append(row)
    queries = sorted(by_query)[:n]
    return [
        {"query": by_query[q][0]["query"], "documents": [r["text"] for r in by_query[q]]}
        for q in queries
    ]


def longest_pair(requests: list[dict], template: TemplateConfig, model: str) -> int:
    backbone = load_backbone(ModelConfig(name=model))
    qpeft = QPeftModel.build(backbone, template, AdapterConfig(method="zero_shot"))
    return max(
        len(layout.input_ids)
        for r in requests
        for layout in qpeft.encode([r["query"]] * len(r["documents"]), r["documents"])
    )


def load(url: str, requests: list[dict], concurrency: int) -> dict:
    def one(body: dict) -> float:
        start = time.perf_counter()
        response = httpx.post(url, json=body, timeout=600)
        response.raise_for_status()
        assert len(response.json()["results"]) == len(body["documents"])
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = sorted(pool.map(one, requests))
    seconds = time.perf_counter() - start
    pairs = sum(len(r["documents"]) for r in requests)
    return {
        "pairs_per_s": pairs / seconds,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; tests parse the lines the docs show with it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", default="runs/prepare/cranfield")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--token-budget", type=int, default=4096)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(f"machine: {detect().describe()}, {torch.get_num_threads()} torch threads", flush=True)

    requests = requests_from(args.prepared, args.requests, args.docs)
    template = {"max_doc_tokens": 96}
    single = longest_pair(requests, TemplateConfig(**template), args.model)
    init_ray(RaySection(num_cpus=2))
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    results: dict[str, dict[int, dict]] = {}
    try:
        for name, budget in (("batched", args.token_budget), ("one pair per batch", single)):
            cfg = from_dict(
                ServeConfig,
                {
                    "model": {"name": args.model},
                    "template": template,
                    "serve": {
                        "port": PORT,
                        "token_budget": budget,
                        "cpus_per_replica": 1.0,
                        "threads_per_replica": 2,
                        "api_key_env": None,
                    },
                },
            )
            serve.run(application(cfg), name="bench", route_prefix="/")
            url = f"http://127.0.0.1:{PORT}/v1/rerank"
            load(url, requests[:2], 2)  # warm-up
            results[name] = {c: load(url, requests, c) for c in args.concurrency}
            serve.delete("bench")
    finally:
        serve.shutdown()

    print(
        f"\n{len(requests)} requests x {args.docs} documents; token budget {args.token_budget} "
        f"vs {single} (the longest pair)\n"
    )
    print(
        "| clients | batched pairs/s | one-pair pairs/s | throughput ratio | batched p50 / p99 s "
        "| one-pair p50 / p99 s |\n|---|---|---|---|---|---|"
    )
    for c in args.concurrency:
        b, s = results["batched"][c], results["one pair per batch"][c]
        print(
            f"| {c} | {b['pairs_per_s']:.2f} | {s['pairs_per_s']:.2f} | "
            f"{b['pairs_per_s'] / s['pairs_per_s']:.2f}x | {b['p50']:.2f} / {b['p99']:.2f} | "
            f"{s['p50']:.2f} / {s['p99']:.2f} |"
        )


if __name__ == "__main__":
    main()
