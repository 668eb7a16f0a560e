"""Scoring throughput: the project's scorer vs a plain transformers loop, measured side by side.

Both score the same (query, document) token sequences (the zero-shot layout, documents cut
at --max-doc-tokens) and must agree on every score. The plain loop runs the whole causal LM
in input order (right padding, same batch size) and takes a full-vocabulary log-softmax
over every position; ours sorts by length, left-pads and runs the LM head only at the
label positions. Achieved GFLOP/s counts 2 x non-embedding parameters per token (plus the
LM head at label positions), as a fraction of a float matmul peak measured in this run.

    python benchmarks/scoring.py                       # SmolLM2-135M on Cranfield, CPU
    python benchmarks/scoring.py --device cuda --dtype bfloat16 --random-weights --shape 7b
    python benchmarks/scoring.py --queries 2 --dtype bfloat16 --profile   # where the time goes
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import psutil
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from qpeft.config import AdapterConfig, ModelConfig, TemplateConfig
from qpeft.lm.backbone import DTYPES, Backbone, freeze, load_backbone, resolve_model_path
from qpeft.lm.hardware import detect
from qpeft.lm.template import PairLayout
from qpeft.scoring.model import QPeftModel
from qpeft.scoring.scorer import length_sorted_batches, score_layouts

SHAPES = {  # LLaMA-2-7B dimensions, for random-weight GPU throughput runs
    "7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
}


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak, or sampled process RSS."""

    def __init__(self, device: str):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.proc = psutil.Process()
            self.base = self.proc.memory_info().rss
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.stop.set()
            self.thread.join()
        self.extra_mib = max(0, self.peak - self.base) / 2**20


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """Best GFLOP/s of a square matmul in `dtype` on `device`."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def plain_loop(backbone: Backbone, layouts: list[PairLayout], batch_size: int) -> list[float]:
    """Reference: whole-sequence logits, full-vocabulary log-softmax, input order."""
    pad = backbone.tokenizer.pad_token_id or 0
    device = backbone.device
    scores = []
    with torch.no_grad():
        for start in range(0, len(layouts), batch_size):
            chunk = layouts[start : start + batch_size]
            width = max(len(x.input_ids) for x in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, x in enumerate(chunk):
                ids[row, : len(x.input_ids)] = torch.tensor(x.input_ids)
                mask[row, : len(x.input_ids)] = 1
            logits = backbone.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for row, x in enumerate(chunk):
                n, end = len(x.query_ids) + 2, len(x.input_ids)
                targets = ids[row, end - n : end].to(device)
                token_lp = logp[row, end - n - 1 : end - 1].gather(-1, targets[:, None])
                scores.append(token_lp.mean().item())
    return scores


def computed_flops(
    layouts: list[PairLayout], batch_size: int, shared_prefix: int, per_token: int, head: int
) -> tuple[int, int]:
    """Linear-layer FLOPs each path really runs, padding included: (plain, qpeft). Their
    ratio is about the speed-up that computing less alone buys, at equal efficiency (the
    attention's own products, a few percent at these lengths, are left out); what the
    measured speed-up adds on top comes from running the same work faster."""
    plain = 0
    for start in range(0, len(layouts), batch_size):
        chunk = layouts[start : start + batch_size]
        plain += (per_token + head) * len(chunk) * max(len(x.input_ids) for x in chunk)
    ours = 0
    for indices in length_sorted_batches(layouts, batch_size):
        width = max(len(layouts[i].input_ids) for i in indices)
        ours += per_token * (shared_prefix + len(indices) * (width - shared_prefix))
        ours += head * len(indices) * max(len(layouts[i].query_ids) + 2 for i in indices)
    return plain, ours


def cranfield_pairs(n_queries: int, depth: int) -> list[tuple[str, str]]:
    from qpeft.data import irds
    from qpeft.data.bm25 import BM25Index

    dataset = irds.load("cranfield")
    docs = dict(irds.iter_docs(dataset))
    queries = list(irds.iter_queries(dataset))[:n_queries]
    index = BM25Index(list(docs), list(docs.values()))
    hits = index.search([q for _, q in queries], depth)
    return [(q, docs[d]) for (_, q), row in zip(queries, hits, strict=True) for d, _ in row]


def random_backbone(name: str, shape: str | None, dtype: torch.dtype, device: str) -> Backbone:
    """Same architecture (optionally resized), random weights: for throughput only."""
    path = resolve_model_path(name)
    config = AutoConfig.from_pretrained(path)
    for key, value in SHAPES.get(shape, {}).items():
        setattr(config, key, value)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return Backbone(freeze(model), AutoTokenizer.from_pretrained(path), f"{name}-random-{shape}")


def non_embedding_params(backbone: Backbone) -> int:
    emb = backbone.input_embeddings.weight.numel()
    return sum(p.numel() for p in backbone.decoder.parameters()) - emb


def profile(paths: dict) -> None:
    """Each path's operators by self CPU time (torch.profiler), the top 15."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name, run in paths.items():
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        print(f"\n== {name} ==")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; tests parse the lines the docs show with it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--shape", choices=list(SHAPES))
    parser.add_argument("--pairs-file", help="JSONL of {query, doc}; default: Cranfield BM25 pairs")
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-doc-tokens", type=int, default=160)
    parser.add_argument("--method", default="zero_shot")
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument("--no-share-prefix", action="store_true", help="full pass per row")
    parser.add_argument(
        "--warmup", choices=["full", "batch"], help="untimed pass first (default: full on cuda)"
    )
    parser.add_argument("--json-out")
    parser.add_argument(
        "--profile", action="store_true", help="print torch.profiler's top operators of each path"
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(f"machine: {detect().describe()}, {torch.get_num_threads()} torch threads", flush=True)

    dtype = DTYPES[args.dtype]
    if args.random_weights:
        backbone = random_backbone(args.model, args.shape, dtype, args.device)
    else:
        backbone = load_backbone(ModelConfig(name=args.model, dtype=args.dtype, device=args.device))
    if args.pairs_file:
        rows = [json.loads(line) for line in Path(args.pairs_file).read_text().splitlines() if line]
        pairs = [(r["query"], r["doc"]) for r in rows]
    else:
        pairs = cranfield_pairs(args.queries, args.depth)
    template = TemplateConfig(max_doc_tokens=args.max_doc_tokens)
    model = QPeftModel.build(backbone, template, AdapterConfig(method=args.method))
    layouts = model.encode([q for q, _ in pairs], [d for _, d in pairs])
    tokens = sum(len(x.input_ids) for x in layouts)
    labels = sum(len(x.query_ids) + 2 for x in layouts)
    per_token = 2 * non_embedding_params(backbone)
    head = 2 * backbone.hidden_size * backbone.vocab_size
    flops = per_token * tokens + head * labels
    # Ours runs the shared prefix once per batch instead of once per pair (a soft prompt's
    # too: scoring runs without gradients): count real work.
    shared = 0 if args.no_share_prefix else len(model.template.shared_prefix_ids)
    n_batches = -(-len(layouts) // args.batch_size)
    ours_flops = flops - per_token * shared * (len(layouts) - n_batches)
    plain_computed, ours_computed = computed_flops(
        layouts, args.batch_size, shared, per_token, head
    )

    share = not args.no_share_prefix
    # Untimed pass first: GPU attention kernels plan per input shape, so warm every shape.
    warm = (
        layouts
        if (args.warmup or ("full" if args.device != "cpu" else "batch")) == "full"
        else layouts[: args.batch_size]
    )
    score_layouts(model, warm, args.batch_size, share)
    plain_loop(backbone, warm, args.batch_size)
    peak = matmul_peak(args.device, dtype, args.peak_size)

    if args.profile:
        profile(
            {
                "qpeft": lambda: score_layouts(model, layouts, args.batch_size, share),
                "plain": lambda: plain_loop(backbone, layouts, args.batch_size),
            }
        )
        return
    results = {}
    for name, run, work in (
        ("qpeft", lambda: score_layouts(model, layouts, args.batch_size, share), ours_flops),
        ("plain", lambda: plain_loop(backbone, layouts, args.batch_size), flops),
    ):
        with PeakMemory(args.device) as mem:
            sync(args.device)
            start = time.perf_counter()
            scores = run()
            sync(args.device)
            seconds = time.perf_counter() - start
        results[name] = {
            "scores": scores,
            "seconds": seconds,
            "pairs_per_s": len(layouts) / seconds,
            "gflops": work / seconds / 1e9,
            "peak_mem_mib": mem.extra_mib
            if not args.device.startswith("cuda")
            else mem.peak / 2**20,
        }
    diff = max(
        abs(a - b)
        for a, b in zip(results["qpeft"]["scores"], results["plain"]["scores"], strict=True)
    )
    ours, plain = results["qpeft"], results["plain"]
    summary = {
        "machine": f"{detect().describe()}, {torch.get_num_threads()} threads",
        "model": backbone.name,
        "dtype": args.dtype,
        "method": args.method,
        "share_prefix": not args.no_share_prefix,
        "pairs": len(layouts),
        "mean_tokens_per_pair": tokens / len(layouts),
        "batch_size": args.batch_size,
        "matmul_peak_gflops": peak,
        "qpeft_pairs_per_s": ours["pairs_per_s"],
        "plain_pairs_per_s": plain["pairs_per_s"],
        "speedup": ours["pairs_per_s"] / plain["pairs_per_s"],
        "computed_flops_ratio": plain_computed / ours_computed,
        "qpeft_gflops": ours["gflops"],
        "qpeft_fraction_of_peak": ours["gflops"] / peak,
        "plain_fraction_of_peak": plain["gflops"] / peak,
        "qpeft_peak_mem_mib": ours["peak_mem_mib"],
        "plain_peak_mem_mib": plain["peak_mem_mib"],
        "max_abs_score_diff": diff,
    }
    print(
        f"pairs: {len(layouts)}  mean tokens/pair: {tokens / len(layouts):.0f}  "
        f"model: {backbone.name} ({args.dtype}, {args.device})  method: {args.method}"
    )
    print(f"matmul peak ({args.peak_size}^3): {peak:.1f} GFLOP/s")
    for name in ("qpeft", "plain"):
        r = results[name]
        mem_label = "peak GPU memory" if args.device.startswith("cuda") else "peak RSS growth"
        print(
            f"{name:>6}: {r['pairs_per_s']:8.2f} pairs/s  {r['gflops']:8.1f} GFLOP/s "
            f"({r['gflops'] / peak:5.1%} of peak)  {mem_label}: {r['peak_mem_mib']:.0f} MiB"
        )
    print(f"speedup (qpeft / plain): {summary['speedup']:.2f}x   max |score diff|: {diff:.2e}")
    print(
        "linear-layer FLOPs computed, padding included, plain / qpeft: "
        f"{summary['computed_flops_ratio']:.2f}x"
        " (the speed-up from computing less; the rest is running it faster)"
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
