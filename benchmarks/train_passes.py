"""Training's backward pass through the suffix only against the full pass, side by side.

With hints as a suffix, no trained weight of Q-PEFT-R or Q-PEFT-A reaches the document
prefix `<bos> P "Passage: " d " \\n"`: training computes it without autograd and
back-propagates through the hint block, "Question:" and the label only
(`qpeft.scoring.model.run_decoder`). This script runs `qpeft.training.loop.backward_step`
on the same training groups both ways in one process (the full pass by collating without
the prefix split, as training did before) and prints training pairs/s, peak RSS growth,
their ratio and the largest gradient difference (they must agree).

    python benchmarks/train_passes.py --prepared runs/prepare/nfcorpus-hybrid
    python benchmarks/train_passes.py --prepared runs/prepare/nfcorpus-hybrid --method qpeft_r
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from unittest import mock

import torch
from scoring import PeakMemory  # benchmarks/ is sys.path[0] when run as a script

from qpeft.artifacts import PreparedData
from qpeft.config import AdapterConfig, LossConfig, ModelConfig, TemplateConfig
from qpeft.lm.backbone import load_backbone
from qpeft.lm.hardware import detect
from qpeft.lm.template import Template
from qpeft.scoring.model import QPeftModel
from qpeft.training.engines import TorchEngine
from qpeft.training.loop import TrainSettings, backward_step, groups_from_rows


@contextlib.contextmanager
def full_pass():
    """Training as it was before the prefix split: every row plainly left-padded, so
    autograd runs through the whole sequence, and micro-batches sized by whole pairs."""
    plain = Template.collate
    with (
        mock.patch.object(
            Template,
            "collate",
            lambda self, layouts, share_prefix=True: plain(self, layouts, False),
        ),
        mock.patch.object(
            QPeftModel, "backprop_tokens", lambda self, layout: len(layout.input_ids)
        ),
    ):
        yield


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; tests parse the lines the docs show with it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", required=True, help="a `qpeft prepare` output folder")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--method", default="qpeft_a", choices=["qpeft_a", "qpeft_r"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--queries-per-batch", type=int, default=4)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--max-doc-tokens", type=int, default=96)
    parser.add_argument("--micro-batch-tokens", type=int, default=768)
    parser.add_argument("--json-out")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(f"machine: {detect().describe()}, {torch.get_num_threads()} torch threads", flush=True)
    torch.manual_seed(0)
    backbone = load_backbone(ModelConfig(name=args.model, dtype=args.dtype))
    model = QPeftModel.build(
        backbone,
        TemplateConfig(max_doc_tokens=args.max_doc_tokens),
        AdapterConfig(method=args.method, dropout=0.0),
    )
    with torch.no_grad():  # as after some training: hints read, MLP off its zero start
        for name, parameter in model.adapter.named_parameters():
            if name.startswith("mlp.2") or name.endswith("gate.weight"):
                parameter.normal_(0.0, 0.02)
    model.adapter.train()
    data = PreparedData(args.prepared)
    rows = data.table(data.GROUPS).slice(0, args.steps * args.queries_per_batch).to_pylist()
    groups = groups_from_rows(rows, args.negatives)
    batches = [
        groups[i : i + args.queries_per_batch]
        for i in range(0, len(groups), args.queries_per_batch)
    ]
    settings = TrainSettings(
        queries_per_batch=args.queries_per_batch, micro_batch_tokens=args.micro_batch_tokens
    )
    engine = TorchEngine(model, settings, total_steps=len(batches), distributed=False)
    loss = LossConfig(in_batch_negatives=1)
    backward_step(engine, model, batches[0][:1], loss, settings.micro_batch_tokens)  # warm-up
    results = {}
    for name in ("full", "suffix_only"):
        with full_pass() if name == "full" else contextlib.nullcontext():
            pairs, first_grads = 0, None
            with PeakMemory("cpu") as memory:
                start = time.perf_counter()
                for batch in batches:
                    engine.optimizer.zero_grad(set_to_none=True)
                    pairs += backward_step(
                        engine, model, batch, loss, settings.micro_batch_tokens
                    ).pairs
                    if first_grads is None:
                        first_grads = [
                            p.grad.clone() for p in model.adapter.parameters() if p.grad is not None
                        ]
                seconds = time.perf_counter() - start
        results[name] = {
            "pairs": pairs,
            "seconds": seconds,
            "pairs_per_s": pairs / seconds,
            "peak_rss_growth_mib": memory.extra_mib,
            "grads": first_grads,
        }
    full, split = results["full"], results["suffix_only"]
    diff = max(
        ((a - b).abs().max() / max(1.0, b.abs().max().item())).item()
        for a, b in zip(split["grads"], full["grads"], strict=True)
    )
    ratio = split["pairs_per_s"] / full["pairs_per_s"]
    for name, r in results.items():
        print(
            f"{name:>12}: {r['pairs_per_s']:6.2f} training pairs/s ({r['pairs']} pairs, "
            f"{r['seconds']:.1f} s)  peak RSS growth {r['peak_rss_growth_mib']:.0f} MiB"
        )
    print(
        f"suffix-only / full: {ratio:.2f}x pairs/s; largest gradient difference "
        f"{diff:.1e} of the gradient's scale"
    )
    if args.json_out:
        summary = {
            "machine": f"{detect().describe()}, {torch.get_num_threads()} threads",
            "model": backbone.name,
            "dtype": str(backbone.dtype).removeprefix("torch."),
            "method": args.method,
            **{
                f"{name}_{k}": v
                for name, r in results.items()
                for k, v in r.items()
                if k != "grads"
            },
            "speedup": ratio,
            "max_relative_grad_diff": diff,
        }
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
