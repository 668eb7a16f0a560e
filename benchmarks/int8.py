"""An int8 path for scoring, measured before it is offered (issue 18, optional): zero-shot
SmolLM2 on Cranfield dev, the LM's linear layers in float32 and dynamically quantised to
int8 (`torch.ao.quantization.quantize_dynamic`, fbgemm's VNNI kernels on x86), side by side:
pairs/s, the largest score difference and dev NDCG@10 of each.

    python benchmarks/int8.py --prepared runs/prepare/cranfield --queries 10 --depth 10
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch

from qpeft.artifacts import PreparedData
from qpeft.config import AdapterConfig, ModelConfig, ScoringConfig, TemplateConfig
from qpeft.lm.backbone import load_backbone
from qpeft.lm.hardware import detect
from qpeft.metrics import mean_ndcg10
from qpeft.scoring.model import QPeftModel
from qpeft.training.loop import TrainSettings, dev_run, load_dev


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; tests parse the lines the docs show with it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", default="runs/prepare/cranfield")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--queries", type=int, default=10, help="first N dev queries")
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--max-doc-tokens", type=int, default=96)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(f"machine: {detect().describe()}, {torch.get_num_threads()} torch threads", flush=True)

    # The dev set as training's dev check reads it: the first N dev queries, their top `depth`.
    settings = TrainSettings(dev_depth=args.depth, dev_max_queries=args.queries)
    dev = load_dev(PreparedData(args.prepared), settings)
    backbone = load_backbone(ModelConfig(name=args.model, dtype="float32"))
    quantised = copy.copy(backbone)
    with warnings.catch_warnings():  # torch marks its quantised tensor types deprecated
        warnings.simplefilter("ignore")
        quantised.model = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(backbone.model), {torch.nn.Linear}, dtype=torch.qint8
        )
    template = TemplateConfig(max_doc_tokens=args.max_doc_tokens)
    results = {}
    for name, lm in (("float32", backbone), ("int8", quantised)):
        model = QPeftModel.build(lm, template, AdapterConfig(method="zero_shot"))
        start = time.perf_counter()
        run = dev_run(model, dev.candidates, args.depth, ScoringConfig())
        seconds = time.perf_counter() - start
        pairs = sum(len(docs) for docs in run.values())
        results[name] = (run, pairs / seconds, mean_ndcg10(dev.qrels, run))
        print(
            f"{name:>8}: {results[name][1]:6.2f} pairs/s  dev NDCG@10 {results[name][2]:.4f}",
            flush=True,
        )
    (fp, fp_rate, fp_ndcg), (q8, q8_rate, q8_ndcg) = results["float32"], results["int8"]
    diff = max(abs(fp[q][d] - q8[q][d]) for q in fp for d in fp[q])
    print(
        f"int8 / float32: {q8_rate / fp_rate:.2f}x pairs/s, NDCG@10 {q8_ndcg - fp_ndcg:+.4f}, "
        f"max |score diff| {diff:.3f} ({pairs} pairs, {len(fp)} dev queries)"
    )


if __name__ == "__main__":
    main()
