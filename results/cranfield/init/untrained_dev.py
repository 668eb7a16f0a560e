"""Dev NDCG@10 of zero-shot and of untrained Q-PEFT-A under each initialisation of its
query/key projections: how close an untrained adapter starts to zero-shot.

The 39 Cranfield dev queries, their BM25 top DEPTH (10 is the training's dev check, 20 is
what reranking reads), the training config's template and scorer, one thread.

    DEPTH=20 python results/cranfield/init/untrained_dev.py smollm2-135m zero_shot random match30

Variants: `zero_shot`; `random` (PyTorch's xavier initialisation of the query/key
projections, as before); `matchS` (the scaled identity with MATCH_SHARPNESS = S).
"""

import os
import sys
import time

import torch

import qpeft.adapters.attention as attention
from pipelines.train import load_dev
from qpeft.config import AdapterConfig, ModelConfig, ScoringConfig, TemplateConfig
from qpeft.lm.backbone import load_backbone
from qpeft.metrics import mean_ndcg10
from qpeft.scoring.model import QPeftModel
from qpeft.training.loop import TrainSettings, dev_run

DEPTH = int(os.environ.get("DEPTH", 10))


def main(name: str, variants: list[str]) -> None:
    torch.set_num_threads(1)
    backbone = load_backbone(ModelConfig(name=name, dtype="float32", device="cpu"))
    dev = load_dev("runs/prepare/cranfield", TrainSettings(dev_depth=DEPTH))
    template = TemplateConfig(max_length=300, max_doc_tokens=96)
    for variant in variants:
        method = "zero_shot" if variant == "zero_shot" else "qpeft_a"
        torch.manual_seed(0)
        if variant.startswith("match"):
            attention.MATCH_SHARPNESS = float(variant.removeprefix("match"))
        model = QPeftModel.build(
            backbone,
            template,
            AdapterConfig(method=method, heads=2, dropout=0.1, k=10, hint_gate=False),
        )
        if variant == "random":
            dim = backbone.hidden_size
            weight = torch.empty(3 * dim, dim)
            torch.nn.init.xavier_uniform_(weight)  # what nn.MultiheadAttention does
            with torch.no_grad():
                model.adapter.attention.in_proj_weight[: 2 * dim].copy_(weight[: 2 * dim])
        model.adapter.eval()
        start = time.time()
        with torch.no_grad():
            run = dev_run(model, dev["candidates"], DEPTH, ScoringConfig(batch_size=8))
        ndcg = mean_ndcg10(dev["qrels"], run)
        seconds = time.time() - start
        print(f"{name}\tdepth {DEPTH}\t{variant}\t{ndcg:.4f}\t{seconds:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
