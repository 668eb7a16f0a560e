"""What the hint gate costs at scoring time: the project's scorer on the same Cranfield BM25
pairs with zero-shot, Q-PEFT-A/-R with gated hints (`adapter.hint_gate: true`, two SDPA
calls per layer; the gate opened, as after training) and with the paper's plain hint
tokens, side by side in one run.

    python benchmarks/hint_gate.py --queries 2 --dtype float32
"""

from __future__ import annotations

import argparse
import time

import torch
from scoring import cranfield_pairs

from qpeft.config import AdapterConfig, ModelConfig, TemplateConfig
from qpeft.lm.backbone import load_backbone
from qpeft.lm.hardware import detect
from qpeft.scoring.model import QPeftModel
from qpeft.scoring.scorer import score_layouts

SYSTEMS = {
    "zero_shot": AdapterConfig(method="zero_shot"),
    "qpeft_a gated": AdapterConfig(method="qpeft_a", hint_gate=True),
    "qpeft_a plain": AdapterConfig(method="qpeft_a", hint_gate=False),
    "qpeft_r gated": AdapterConfig(method="qpeft_r", hint_gate=True),
    "qpeft_r plain": AdapterConfig(method="qpeft_r", hint_gate=False),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; tests parse the lines the docs show with it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-doc-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many passes")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(f"machine: {detect().describe()}, {torch.get_num_threads()} torch threads", flush=True)
    backbone = load_backbone(ModelConfig(name=args.model, dtype=args.dtype))
    pairs = cranfield_pairs(args.queries, args.depth)
    template = TemplateConfig(max_doc_tokens=args.max_doc_tokens)
    rates = {}
    for name, adapter in SYSTEMS.items():
        torch.manual_seed(0)
        model = QPeftModel.build(backbone, template, adapter).eval()
        if getattr(model.adapter, "gate", None) is not None:
            with torch.no_grad():  # a shut gate skips the block: time a trained, open one
                model.adapter.gate.weight.fill_(0.01)
        layouts = model.encode([q for q, _ in pairs], [d for _, d in pairs])
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            score_layouts(model, layouts, args.batch_size)
            best = min(best, time.perf_counter() - start)
        rates[name] = len(layouts) / best
        tokens = sum(len(x.input_ids) for x in layouts) / len(layouts)
        print(f"{name:>14}: {rates[name]:6.2f} pairs/s  ({tokens:.0f} tokens per pair)", flush=True)
    for method in ("qpeft_a", "qpeft_r"):
        gated, plain = rates[f"{method} gated"], rates[f"{method} plain"]
        print(
            f"{method}: gated / plain {gated / plain:.2f}x, gated / zero-shot "
            f"{gated / rates['zero_shot']:.2f}x"
        )


if __name__ == "__main__":
    main()
