"""Worker of tests/test_deepspeed.py's parity test: two gloo processes take one optimiser
step with DDP and ZeRO stages 0-3 from the same seed and data, and save the adapter's
weights after it (SGD: the update is the gradient); rank 0 also exports the ZeRO-3
adapter and scores pairs with it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from qpeft.config import AdapterConfig, LossConfig, ModelConfig, TemplateConfig
from qpeft.lm.backbone import load_backbone
from qpeft.loading.checkpoint import load_adapter, save_adapter
from qpeft.scoring.model import QPeftModel
from qpeft.scoring.scorer import score_pairs
from qpeft.training import engines
from qpeft.training.engines import DeepSpeedEngine, TorchEngine
from qpeft.training.loop import TrainSettings, backward_step
from qpeft.training.losses import TrainingGroup
from tests.conftest import TINY_TEMPLATE
from tests.synthetic import CONTENT

METHODS = ("qpeft_a", "qpeft_r", "soft_prompt")
ENGINES = (("ddp", 0), *(("deepspeed", stage) for stage in (0, 1, 2, 3)))
# Small enough that rank 0's long groups need more micro-batches than rank 1's short ones
# (and, under DDP, two passes for a group over the budget by itself).
TOKEN_BUDGET = 60


def rank_groups(rank: int) -> list[TrainingGroup]:
    """Rank 0 gets long queries and documents, rank 1 short ones: unequal micro-batch
    counts, whether a method back-propagates through whole pairs (the soft prompt) or
    through the part after the document only (Q-PEFT: hints, one per query token, and
    the query)."""
    length = 14 if rank == 0 else 4
    query_length = 8 if rank == 0 else 2

    def text(i: int, n: int) -> str:
        return " ".join(CONTENT[(i + j) % len(CONTENT)] for j in range(n))

    return [
        TrainingGroup(
            query_id=f"r{rank}q{i}",
            query=text(7 * i + rank, query_length),
            positive=(f"p{i}", text(7 * i + rank, length)),
            negatives=[(f"n{i}{j}", text(11 * i + 3 * j, length)) for j in range(2)],
        )
        for i in range(2)
    ]


def settings_for(engine: str, stage: int) -> TrainSettings:
    return TrainSettings(
        queries_per_batch=2,
        lr=0.5,  # large, so that the gradients' differences would show
        embedding_lr=None,
        gate_lr=None,
        warmup_ratio=0.0,
        decay="none",
        grad_clip=1.0,
        engine=engine,
        zero_stage=stage,
        micro_batch_tokens=TOKEN_BUDGET,
    )


def sgd(adapter: torch.nn.Module, settings: TrainSettings, total_steps: int):
    """Plain SGD at a constant rate: the update is the (clipped) gradient itself. AdamW's
    first step is lr * g / (|g| + eps), about lr * sign(g), which turns rounding noise in
    gradients that are zero in theory (Q-PEFT-A's key bias) into differences of 2 lr."""
    optimizer = torch.optim.SGD([p for p in adapter.parameters() if p.requires_grad], settings.lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def run(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    engines.make_optimizer = sgd  # both engines build their optimiser through this name
    dist.init_process_group("gloo", rank=rank, world_size=world)
    backbone = load_backbone(ModelConfig(name=model_dir, dtype="float32"))
    template = TemplateConfig(**TINY_TEMPLATE)
    loss = LossConfig(kind="pairwise", in_batch_negatives=1)
    micro_batches = {}
    for method in METHODS:
        adapter = AdapterConfig(method=method, k=3, dropout=0.0, hint_gate=False)

        def build(adapter: AdapterConfig = adapter) -> QPeftModel:
            torch.manual_seed(0)
            return QPeftModel.build(backbone, template, adapter)

        for name, stage in ENGINES:
            qpeft = build()
            qpeft.adapter.train()
            settings = settings_for(name, stage)
            engine = (
                TorchEngine(qpeft, settings, 1, distributed=True)
                if name == "ddp"
                else DeepSpeedEngine(qpeft, settings, 1, world)
            )
            result = backward_step(engine, qpeft, rank_groups(rank), loss, TOKEN_BUDGET)
            engine.step()
            micro_batches[f"{method}-{name}{stage}-rank{rank}"] = result.micro_batches
            with engine.gathered():
                weights = {
                    k: v.detach().clone().contiguous()
                    for k, v in qpeft.adapter.state_dict().items()
                }
                if rank == 0 and stage == 3:
                    save_adapter(qpeft, Path(out) / f"{method}-zero3-adapter")
            if rank == 0:
                save_file(weights, str(Path(out) / f"{method}-{name}{stage}.safetensors"))
            if stage == 3:
                queries, docs = ["w1 w2", "w3"], ["w1 w2 w5 w6", "w9 w3 w4"]
                with engine.eval_model(build) as model:
                    in_memory = score_pairs(model.eval(), queries, docs)
                dist.barrier()  # the export is whole before anyone reads it
                exported = load_adapter(Path(out) / f"{method}-zero3-adapter", backbone)
                if rank == 0:
                    scores = {
                        "in_memory": in_memory,
                        "exported": score_pairs(exported, queries, docs),
                    }
                    (Path(out) / f"{method}-zero3-scores.json").write_text(json.dumps(scores))
            dist.barrier()
    counts = [None] * world
    dist.all_gather_object(counts, micro_batches)
    if rank == 0:
        merged = {k: v for c in counts for k, v in c.items()}
        (Path(out) / "micro_batches.json").write_text(json.dumps(merged))
    # Both ranks leave together: a rank that tears gloo down while its peer still holds
    # the group aborts now and then ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()
