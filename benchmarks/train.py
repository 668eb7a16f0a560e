"""Training throughput with 1 and 2 Ray Train workers on CPU (DDP over gloo).

Runs `qpeft train` twice on the same prepared data with the same per-worker batch (weak
scaling): 1 worker, then 2. Prints training pairs/s (steps after the first, from the run's
metrics), the scaling efficiency (2-worker rate / (2 x 1-worker rate)), each worker's
peak RSS and the gradient bytes DDP all-reduces per step (counted by a DDP comm hook).
With `--dense-embedding` it also runs 2 workers with E' as a dense trainable table (every
row, as before issue 16's sparse delta), side by side with the sparse delta. With
`--compare-dtypes` it runs 2 workers with the LM in float32 and in bfloat16 (the adapter
stays fp32), side by side: pairs/s, peak RSS and the dev figures after the same steps.
With `--engine deepspeed --zero-stage N` it runs 2 workers with DDP and then with DeepSpeed
ZeRO-N (gloo on CPUs), side by side on the same data and steps.

    python benchmarks/train.py --prepared runs/prepare/cranfield [--steps 4] [--dense-embedding]
    python benchmarks/train.py --prepared runs/prepare/cranfield --compare-dtypes
    python benchmarks/train.py --prepared runs/prepare/cranfield --engine deepspeed --zero-stage 3
"""

from __future__ import annotations

import argparse
import tempfile
from unittest import mock

import torch

import pipelines.train
from pipelines.train import TrainRunConfig, train
from qpeft.config import from_dict
from qpeft.lm.hardware import detect


def run(
    workers: int,
    args,
    storage: str,
    name: str = "",
    dtype: str | None = None,
    engine: str = "ddp",
) -> list:
    """A short `qpeft train`; its dev history (step 0, then the end of the step budget)."""
    cfg = from_dict(
        TrainRunConfig,
        {
            "model": {"name": args.model, "dtype": dtype or args.dtype},
            "template": {"max_doc_tokens": args.max_doc_tokens},
            "adapter": {"method": args.method},
            "loss": {"in_batch_negatives": 0},
            "train": {
                "epochs": 1,
                "queries_per_batch": args.queries_per_worker,
                "max_negatives": 1,
                "max_steps": args.steps,
                "checkpoint_every": 10**6,
                "dev_depth": args.dev_depth,
                "dev_max_queries": args.dev_queries,
                "engine": engine,
                "zero_stage": args.zero_stage,
            },
            "data": {"prepared_dir": args.prepared},
            "scaling": {"num_workers": workers, "cpus_per_worker": 0.5},
            "run": {"name": f"bench-{workers}{name}", "storage_path": storage, "max_failures": 0},
            "ray": {"num_cpus": 2},
        },
    )
    return train(cfg)["history"]


def compare_dtypes(args) -> None:
    """2 workers, the LM in float32 then bfloat16, on the same data and steps."""
    with tempfile.TemporaryDirectory() as storage:
        runs = {d: run(2, args, storage, f"-{d}", d) for d in ("float32", "bfloat16")}
    for dtype, history in runs.items():
        last = history[-1]
        curve = ", ".join(f"step {h['step']} {h['dev_ndcg10']:.4f}" for h in history)
        print(
            f"{dtype:>8}: {last['train_pairs_per_s']:6.2f} training pairs/s, peak RSS per worker "
            f"{', '.join(f'{m:.0f}' for m in last['peak_rss_mib'])} MiB; dev NDCG@10 {curve}; "
            f"dev loss {history[0]['dev_loss']:.4f} -> {last['dev_loss']:.4f}"
        )
    ratio = runs["bfloat16"][-1]["train_pairs_per_s"] / runs["float32"][-1]["train_pairs_per_s"]
    print(f"bfloat16 / float32: {ratio:.2f}x training pairs/s ({args.method}, {args.model})")


def compare_engines(args) -> None:
    """2 workers with DDP, then with DeepSpeed ZeRO-`args.zero_stage`, same data and steps."""
    with tempfile.TemporaryDirectory() as storage:
        runs = {e: run(2, args, storage, f"-{e}", engine=e)[-1] for e in ("ddp", "deepspeed")}
    for engine, last in runs.items():
        label = f"ZeRO-{args.zero_stage}" if engine == "deepspeed" else "DDP"
        print(
            f"{label:>7}: {last['train_pairs_per_s']:6.2f} training pairs/s, peak RSS per worker "
            f"{', '.join(f'{m:.0f}' for m in last['peak_rss_mib'])} MiB"
        )
    ratio = runs["deepspeed"]["train_pairs_per_s"] / runs["ddp"]["train_pairs_per_s"]
    print(
        f"ZeRO-{args.zero_stage} / DDP: {ratio:.2f}x training pairs/s ({args.method}, {args.model})"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; tests parse the lines the docs show with it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", default="runs/prepare/cranfield")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", default="qpeft_a")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--queries-per-worker", type=int, default=2)
    parser.add_argument("--max-doc-tokens", type=int, default=64)
    parser.add_argument("--dense-embedding", action="store_true")
    parser.add_argument("--dtype", default="auto", help="the LM's dtype (model.dtype)")
    parser.add_argument("--compare-dtypes", action="store_true")
    parser.add_argument(
        "--engine", choices=["ddp", "deepspeed"], default="ddp", help="deepspeed: beside DDP"
    )
    parser.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2, 3])
    parser.add_argument("--dev-queries", type=int, default=1, help="dev check: queries")
    parser.add_argument("--dev-depth", type=int, default=2, help="dev check: candidates each")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(f"machine: {detect().describe()}, {torch.get_num_threads()} torch threads", flush=True)
    if args.compare_dtypes:
        compare_dtypes(args)
        return
    if args.engine == "deepspeed":
        compare_engines(args)
        return
    with tempfile.TemporaryDirectory() as storage:
        one, two = run(1, args, storage)[-1], run(2, args, storage)[-1]
        if args.dense_embedding:
            # No trainable-row list: the delta covers the whole vocabulary (a dense E').
            with mock.patch.object(pipelines.train, "training_token_ids", return_value=None):
                dense = run(2, args, storage, "-dense")[-1]
    r1, r2 = one["train_pairs_per_s"], two["train_pairs_per_s"]
    print(
        f"1 worker : {r1:6.2f} training pairs/s, peak RSS per worker "
        f"{', '.join(f'{m:.0f}' for m in one['peak_rss_mib'])} MiB"
    )
    print(
        f"2 workers: {r2:6.2f} training pairs/s, peak RSS per worker "
        f"{', '.join(f'{m:.0f}' for m in two['peak_rss_mib'])} MiB"
    )
    print(f"speedup {r2 / r1:.2f}x, scaling efficiency {r2 / (2 * r1):.0%}")
    print(
        f"gradients all-reduced per step with 2 workers: {two['allreduce_mib_per_step']:.2f} MiB "
        f"per rank ({args.method}, {args.model})"
    )
    if args.dense_embedding:
        rd = dense["train_pairs_per_s"]
        print(
            f"2 workers, dense E': {rd:6.2f} training pairs/s, "
            f"{dense['allreduce_mib_per_step']:.2f} MiB all-reduced per step, peak RSS per "
            f"worker {', '.join(f'{m:.0f}' for m in dense['peak_rss_mib'])} MiB; "
            f"sparse delta / dense: {r2 / rd:.2f}x pairs/s, "
            f"{two['allreduce_mib_per_step'] / dense['allreduce_mib_per_step']:.3f}x bytes"
        )


if __name__ == "__main__":
    main()
