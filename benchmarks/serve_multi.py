"""Many adapters on one LM: throughput with 16 concurrent clients spread over 1, 4 and 16
adapters, resident memory per added adapter against its size on disk, and the latency of an
adapter's first request, measured side by side in one run.

The adapters are Q-PEFT-A with the gate open and every weight moved off its start, so their
hints are read as a trained adapter's are; E' keeps the rows of the requests' query tokens,
as training would. Requests are Cranfield queries with `--docs` of their BM25 candidates;
request i goes to adapter i mod k.

    python benchmarks/serve_multi.py --prepared runs/prepare/cranfield
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import psutil
import torch
from ray import serve
from serve import load, requests_from  # benchmarks/serve.py, beside this script

from pipelines.ray_setup import RaySection, init_ray
from pipelines.serve import ServeConfig, application
from qpeft.adapters.attention import QueryAttention
from qpeft.config import AdapterConfig, ModelConfig, TemplateConfig, from_dict
from qpeft.lm.backbone import load_backbone
from qpeft.lm.hardware import detect
from qpeft.lm.template import Template
from qpeft.loading.adapter_cache import AdapterCache
from qpeft.loading.checkpoint import WEIGHTS_NAME, save_adapter
from qpeft.scoring.model import QPeftModel

PORT = 8438


def write_adapters(root: Path, model: str, requests: list[dict], count: int) -> None:
    backbone = load_backbone(ModelConfig(name=model))
    adapter = AdapterConfig(method="qpeft_a", dropout=0.0)
    template = TemplateConfig(max_doc_tokens=96)
    layout = Template(template, backbone.tokenizer, "qpeft_a", hint_gate=True)
    queries = layout.tokenize_queries([r["query"] for r in requests])
    ids = QueryAttention.trainable_token_ids(layout, queries, [])
    for i in range(count):
        torch.manual_seed(i)
        qpeft = QPeftModel.build(backbone, template, adapter, torch.tensor(ids))
        with torch.no_grad():
            for name, parameter in qpeft.adapter.named_parameters():
                parameter.add_(torch.randn_like(parameter) * 0.01)
                if name.endswith("gate.weight"):
                    parameter.fill_(0.5)
        save_adapter(qpeft, root / f"a{i:02d}")


def memory_per_adapter(root: Path, model: str, count: int) -> tuple[float, float]:
    """(MiB of resident memory per adapter loaded into one cache, MiB of weights on disk)."""
    cache = AdapterCache(
        load_backbone(ModelConfig(name=model)), TemplateConfig(), str(root), 2**40, count
    )
    gc.collect()
    before = psutil.Process().memory_info().rss
    for name in cache.available()[:count]:
        cache.get(name)
    gc.collect()
    grown = psutil.Process().memory_info().rss - before
    on_disk = sum((root / n / WEIGHTS_NAME).stat().st_size for n in cache.available()[:count])
    return grown / count / 2**20, on_disk / count / 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; tests parse the lines the docs show with it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", default="runs/prepare/cranfield")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 4, 16])
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(f"machine: {detect().describe()}", flush=True)
    requests = requests_from(args.prepared, args.requests, args.docs)
    most = max(args.adapters)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_adapters(root, args.model, requests, most + 1)  # one more: first-use latency
        per_adapter, on_disk = memory_per_adapter(root, args.model, most)
        init_ray(RaySection(num_cpus=2))
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        cfg = from_dict(
            ServeConfig,
            {
                "model": {"name": args.model},
                "template": {"max_doc_tokens": 96},
                "serve": {
                    "port": PORT,
                    "adapter_root": str(root),
                    "max_adapters": most + 1,
                    "cpus_per_replica": 1.0,
                    "threads_per_replica": 2,
                    "api_key_env": None,
                },
            },
        )
        try:
            serve.run(application(cfg), name="bench", route_prefix="/")
            url = f"http://127.0.0.1:{PORT}/v1/rerank"
            names = [f"a{i:02d}" for i in range(most)]
            warm = [{**r, "model": names[i % most]} for i, r in enumerate(requests)]
            load(url, warm[:most], args.clients)  # every adapter loaded before timing
            results = {}
            for k in args.adapters:
                spread = [{**r, "model": names[i % k]} for i, r in enumerate(requests)]
                results[k] = load(url, spread, args.clients)
            fresh = {**requests[0], "model": f"a{most:02d}"}
            first = load(url, [fresh], 1)["p50"]
            again = load(url, [fresh], 1)["p50"]
        finally:
            serve.shutdown()

    print(f"\n{len(requests)} requests x {args.docs} documents, {args.clients} clients\n")
    print("| adapters | pairs/s | vs 1 adapter | p50 / p99 s |\n|---|---|---|---|")
    base = results[args.adapters[0]]["pairs_per_s"]
    for k, r in results.items():
        print(
            f"| {k} | {r['pairs_per_s']:.2f} | {r['pairs_per_s'] / base:.2f}x | "
            f"{r['p50']:.2f} / {r['p99']:.2f} |"
        )
    print(
        f"\nresident memory per added adapter: {per_adapter:.2f} MiB, its weights on disk "
        f"{on_disk:.2f} MiB ({per_adapter / on_disk:.2f}x)"
    )
    print(f"first request to a new adapter: {first:.2f} s; the same request again: {again:.2f} s")


if __name__ == "__main__":
    main()
