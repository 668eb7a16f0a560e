"""DeepSpeed ZeRO training steps of the qpeft engine on one GPU (bf16, random weights).

Runs the same engine `qpeft train` uses on GPUs, in a single process (world size 1), on
fixed groups built from a pairs file: prints seconds per step, training pairs/s, peak GPU
memory and the loss over steps, then saves the adapter under ZeRO-3 (gathered) and reloads
it to check that the saved weights are complete.

    python benchmarks/gpu_train_step.py --model CONFIG_DIR --pairs PAIRS.jsonl --stage 3
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from scoring import SHAPES, random_backbone  # benchmarks/ is sys.path[0] when run as a script

from qpeft.config import AdapterConfig, LossConfig, TemplateConfig
from qpeft.lm.hardware import detect
from qpeft.loading.checkpoint import load_adapter, save_adapter
from qpeft.scoring.model import QPeftModel
from qpeft.training.engines import DeepSpeedEngine
from qpeft.training.loop import TrainSettings, backward_step
from qpeft.training.losses import TrainingGroup


def groups_from_pairs(path: str, per_query: int, n_queries: int) -> list[TrainingGroup]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    by_query: dict[str, list[str]] = {}
    for row in rows:
        by_query.setdefault(row["query"], []).append(row["doc"])
    groups = []
    for i, (query, docs) in enumerate(list(by_query.items())[:n_queries]):
        docs = docs[: per_query + 1]
        groups.append(
            TrainingGroup(
                f"q{i}", query, ("p", docs[0]), [(f"n{j}", d) for j, d in enumerate(docs[1:])]
            )
        )
    return groups


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; tests parse the lines the docs show with it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--shape", choices=list(SHAPES))
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--method", default="qpeft_a")
    parser.add_argument("--queries-per-batch", type=int, default=4)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(f"machine: {detect().describe()}, {torch.get_num_threads()} torch threads", flush=True)

    for key, value in (
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29511"),
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
    ):
        os.environ.setdefault(key, value)
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl")
    torch.cuda.set_device(0)
    torch.manual_seed(0)
    backbone = random_backbone(args.model, args.shape, torch.bfloat16, "cuda")
    if args.gradient_checkpointing:
        backbone.model.gradient_checkpointing_enable({"use_reentrant": False})
    template = TemplateConfig(max_length=300)
    qpeft = QPeftModel.build(backbone, template, AdapterConfig(method=args.method, k=10))
    qpeft.adapter.train()
    settings = TrainSettings(
        queries_per_batch=args.queries_per_batch, lr=3e-2, engine="deepspeed", zero_stage=args.stage
    )
    engine = DeepSpeedEngine(qpeft, settings, args.steps, world_size=1)
    groups = groups_from_pairs(args.pairs, args.negatives, args.queries_per_batch)
    loss_config = LossConfig(in_batch_negatives=1)
    losses, times = [], []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(args.steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = backward_step(engine, qpeft, groups, loss_config, settings.micro_batch_tokens)
        engine.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(result.loss)
    pairs = result.pairs
    steady = times[1:] or times
    per_step = sum(steady) / len(steady)
    print(
        f"{backbone.name} {args.method} ZeRO-{args.stage}, bf16 LM, fp32 adapter: "
        f"{per_step:.3f} s/step "
        f"({pairs} pairs/step, {pairs / per_step:.1f} training pairs/s), "
        f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, "
        f"trainable {qpeft.adapter.num_trainable_parameters() / 1e6:.1f}M"
    )
    print("loss by step: " + " ".join(f"{v:.3f}" for v in losses))
    with tempfile.TemporaryDirectory() as tmp:
        with engine.gathered():
            save_adapter(qpeft, f"{tmp}/adapter")
            expected = {k: v.float().cpu().clone() for k, v in qpeft.adapter.state_dict().items()}
        reloaded = load_adapter(f"{tmp}/adapter", backbone).adapter.state_dict()
        worst = max((reloaded[k].float().cpu() - v).abs().max().item() for k, v in expected.items())
        empty = [k for k, v in reloaded.items() if v.numel() == 0]
        print(f"saved adapter: {len(reloaded)} tensors, empty {empty}, max |diff| {worst:.2e}")


if __name__ == "__main__":
    main()
