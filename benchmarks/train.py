"""Training throughput with 1 and 2 Ray Train workers on CPU (DDP over gloo).

Runs `qpeft train` twice on the same prepared data with the same per-worker batch (weak
scaling): 1 worker, then 2. Prints training pairs/s (steps after the first, from the run's
metrics), the scaling efficiency (2-worker rate / (2 x 1-worker rate)), each worker's
peak RSS and the gradient bytes DDP all-reduces per step (counted by a DDP comm hook).
With `--dense-embedding` it also runs 2 workers with E' as a dense trainable table (every
row, as before issue 16's sparse delta), side by side with the sparse delta.

    python benchmarks/train.py --prepared runs/prepare/cranfield [--steps 4] [--dense-embedding]
"""

from __future__ import annotations

import argparse
import tempfile
from unittest import mock

import pipelines.train
from pipelines.train import TrainRunConfig, train
from qpeft.config import from_dict


def run(workers: int, args, storage: str, name: str = "") -> dict:
    cfg = from_dict(
        TrainRunConfig,
        {
            "model": {"name": args.model},
            "template": {"max_doc_tokens": args.max_doc_tokens},
            "adapter": {"method": args.method},
            "loss": {"in_batch_negatives": 0},
            "train": {
                "epochs": 1,
                "queries_per_batch": args.queries_per_worker,
                "max_negatives": 1,
                "max_steps": args.steps,
                "checkpoint_every": 10**6,
                "dev_depth": 2,
                "dev_max_queries": 1,
            },
            "data": {"prepared_dir": args.prepared},
            "scaling": {"num_workers": workers, "cpus_per_worker": 0.5},
            "run": {"name": f"bench-{workers}{name}", "storage_path": storage, "max_failures": 0},
            "ray": {"num_cpus": 2},
        },
    )
    return train(cfg)["history"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", default="runs/prepare/cranfield")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", default="qpeft_a")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--queries-per-worker", type=int, default=2)
    parser.add_argument("--max-doc-tokens", type=int, default=64)
    parser.add_argument("--dense-embedding", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as storage:
        one, two = run(1, args, storage), run(2, args, storage)
        if args.dense_embedding:
            # No trainable-row list: the delta covers the whole vocabulary (a dense E').
            with mock.patch.object(pipelines.train, "training_token_ids", return_value=None):
                dense = run(2, args, storage, "-dense")
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
