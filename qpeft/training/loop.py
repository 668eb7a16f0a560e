"""The parts of training that do not depend on Ray.

One optimisation step on a batch of training groups; dev evaluation through the shared
scorer (dev loss, NDCG@10 and the fusion weight), each rank scoring a slice; best tracking
and early stopping, with the best adapter published as soon as it is found; the optimiser
and learning-rate schedule; and the checkpoint's contents (adapter, engine and training
state). `pipelines/train.py` runs these under Ray Train with DDP (CPU) or DeepSpeed (GPU).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from qpeft import storage
from qpeft.artifacts import PreparedData, TrainingRun
from qpeft.config import LossConfig, ScoringConfig
from qpeft.lm.template import PairLayout
from qpeft.loading.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_adapter_config, save_adapter
from qpeft.metrics import Qrels, mean, ndcg10_by_query
from qpeft.scoring.fusion import choose_weight
from qpeft.scoring.model import QPeftModel
from qpeft.scoring.scorer import score_with
from qpeft.training.diagnostics import adapter_diagnostics
from qpeft.training.losses import GroupedPairs, LossScale, TrainingGroup, group_pairs, ranking_loss

# The hint gate's learning rate when `train.gate_lr` is null.
DEFAULT_GATE_LR = 1.0e-2


@dataclass
class TrainSettings:
    """Optimisation and early-stopping settings (config section `train`)."""

    epochs: int = 3
    # Query groups per worker in one optimiser step (the step size: groups x workers).
    queries_per_batch: int = 8
    # The MLP / attention / soft prompt. The paper's 3e-2 was pure bf16, which rounds most
    # small updates away; in fp32 it moved the adapter so far per step that the ranking
    # collapsed (issue 15). 1e-3 is the usual AdamW rate for small adapters.
    lr: float = 1.0e-3
    # E' (the query-token and hint-word rows); null: train.lr. Embedding rows enter the
    # LM as tokens, so they get a smaller rate than the module that builds hints from them.
    embedding_lr: float | None = 1.0e-4
    # The hint gate g (`adapter.hint_gate`); null: DEFAULT_GATE_LR. One number per layer
    # and head that starts at 0. On Cranfield dev, 1e-3 and 1e-2 tied (NDCG@10 within
    # 0.002); at 1e-3 an epoch left tanh(g) near 0.003, so the hints were barely read.
    # Set with `adapter.hint_gate: false` it is refused: there is no gate to train.
    gate_lr: float | None = None
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # Linear warmup over this share of the run's optimiser steps, then `decay`.
    warmup_ratio: float = 0.1
    decay: Literal["none", "linear", "cosine"] = "linear"
    patience: int = 2
    # What the dev check keeps the best adapter by and counts patience on: dev NDCG@10
    # (higher is better) or the dev loss (lower is better; the authors' choice).
    select_on: Literal["dev_ndcg10", "dev_loss"] = "dev_ndcg10"
    checkpoint_every: int = 25
    gradient_checkpointing: bool = False
    seed: int = 13
    dev_depth: int = 20
    dev_max_queries: int | None = None
    max_steps: int | None = None  # stop after this many optimizer steps in all
    max_negatives: int | None = None  # use at most this many of each group's hard negatives
    # Train on this many training queries at most, a fixed nested subset (smaller sizes
    # inside larger ones: `nested_subset`), for learning curves. null: all of them.
    max_train_queries: int | None = None
    # Memory is set by tokens, not queries: a step's pairs run in micro-batches of at most
    # this many (padded) tokens, with the same update as one batch (`backward_step`).
    micro_batch_tokens: int = 768
    fail_at_step: int | None = None  # testing: kill one worker once at this step
    # ddp: DistributedDataParallel (gloo on CPUs, NCCL on GPUs); deepspeed: ZeRO at
    # `zero_stage`, on CPUs (gloo) as on GPUs; auto: deepspeed on GPUs, ddp on CPUs.
    engine: Literal["auto", "ddp", "deepspeed"] = "auto"
    zero_stage: int = 2

    def validate(self) -> None:
        from qpeft.config import ConfigError

        for key in (
            "epochs",
            "queries_per_batch",
            "checkpoint_every",
            "dev_depth",
            "micro_batch_tokens",
        ):
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key}: must be positive")
        if self.lr <= 0:
            raise ConfigError("train.lr: must be positive")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"train.zero_stage: {self.zero_stage} is not a ZeRO stage (0-3)")
        if self.max_train_queries is not None and self.max_train_queries <= 0:
            raise ConfigError("train.max_train_queries: must be positive (or null: all)")
        for key in ("embedding_lr", "gate_lr"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"train.{key}: must be positive (or null: its default)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("train.warmup_ratio: must be in [0, 1)")


def groups_from_rows(
    rows: list[dict], max_negatives: int | None = None, epoch: int | None = None, seed: int = 0
) -> list[TrainingGroup]:
    """TrainingGroups from rows of the prepared `groups` shards.

    With `epoch`, each group's `max_negatives` hard negatives are drawn afresh from its
    stored pool, seeded by (seed, epoch, query): every epoch shows other negatives, and a
    resumed or re-run epoch the same ones. Without it (dev), the first ones, always."""
    groups = []
    for r in rows:
        pool = list(zip(r["negative_ids"], r["negative_texts"], strict=True))
        if epoch is not None and max_negatives is not None and len(pool) > max_negatives:
            rng = random.Random(f"{seed}/{epoch}/{r['query_id']}")
            pool = rng.sample(pool, max_negatives)
        groups.append(
            TrainingGroup(
                query_id=r["query_id"],
                query=r["query"],
                positive=(r["positive_id"], r["positive_text"]),
                negatives=pool[:max_negatives],
            )
        )
    return groups


def batch_loss(
    model: torch.nn.Module, qpeft: QPeftModel, groups: list[TrainingGroup], loss: LossConfig
) -> torch.Tensor:
    """The paper's loss for one batch of groups in one pass; `model` is `qpeft` or its
    DDP/DeepSpeed wrapper (calling it runs `log_likelihood`, so wrappers see the forward)."""
    pairs = group_pairs(groups, loss.in_batch_negatives)
    batch = qpeft.template.collate(qpeft.encode(pairs.queries, pairs.docs))
    nll = -model(batch.to(qpeft.backbone.device))
    return ranking_loss(nll[pairs.index.to(nll.device)], pairs.valid.to(nll.device), loss)


def full_length(layout: PairLayout) -> int:
    return len(layout.input_ids)


def token_micro_batches(
    layouts: list[PairLayout], budget: int, length: Callable[[PairLayout], int] = full_length
) -> list[list[int]]:
    """Indices of `layouts` in length-sorted micro-batches whose padded size (rows x the
    longest row, by `length`) stays within `budget` tokens; a pair longer than the budget
    goes alone."""
    order = sorted(range(len(layouts)), key=lambda i: -length(layouts[i]))
    batches: list[list[int]] = []
    for i in order:
        # Sorted longest first, so a batch's first row sets its width.
        width = length(layouts[batches[-1][0]]) if batches else 0
        if batches and width * (len(batches[-1]) + 1) <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@dataclass
class MicroBatch:
    """Whole query groups (rows of the loss matrix) scored and back-propagated together.
    One chunk: a single pass. Several: one group alone is over the token budget and runs
    in two passes over those chunks of its pairs."""

    groups: list[int]
    chunks: list[list[int]]


def plan_micro_batches(
    layouts: list[PairLayout],
    pairs: GroupedPairs,
    budget: int,
    split_groups: bool,
    length: Callable[[PairLayout], int] = full_length,
) -> list[MicroBatch]:
    """Pack whole query groups, longest first, into micro-batches of at most `budget`
    padded tokens (counted by `length`: the tokens back-propagated through). A group over
    the budget by itself is cut into pair chunks when `split_groups` (two passes), else it
    runs alone."""
    rows_of = [pairs.index[q][pairs.valid[q]].tolist() for q in range(len(pairs.index))]

    def width(rows: list[int]) -> int:
        return max(length(layouts[i]) for i in rows)

    plan: list[MicroBatch] = []
    packed: list[int] = []  # groups of the micro-batch being filled
    for q in sorted(range(len(rows_of)), key=lambda q: -width(rows_of[q])):
        rows = rows_of[q]
        if width(rows) * len(rows) > budget:
            chunks = (
                [
                    [rows[i] for i in c]
                    for c in token_micro_batches([layouts[r] for r in rows], budget, length)
                ]
                if split_groups
                else [rows]
            )
            plan.append(MicroBatch([q], chunks))
            packed = []  # the next group starts a new micro-batch, never joins this one
            continue
        current = [r for g in packed for r in rows_of[g]]
        if packed and width(current) * (len(current) + len(rows)) <= budget:
            packed.append(q)
            plan[-1] = MicroBatch(list(packed), [current + rows])
        else:
            packed = [q]
            plan.append(MicroBatch([q], [list(rows)]))
    return plan


@dataclass
class StepResult:
    loss: float
    pairs: int
    micro_batches: int
    query_tokens_cut: int


def backward_step(
    engine, qpeft: QPeftModel, groups: list[TrainingGroup], loss: LossConfig, token_budget: int
) -> StepResult:
    """Gradients of the batch loss, in micro-batches of at most `token_budget` padded
    tokens back-propagated through (`QPeftModel.backprop_tokens`), so memory follows
    tokens and not queries per batch; the update equals one pass over the whole batch.

    The loss is a sum of per-query terms over batch-wide denominators (`LossScale`), so
    whole query groups are packed into micro-batches and each back-propagates its exact
    share, at no extra cost. A single group over the budget (long pairs, many negatives)
    runs in two passes, as in GradCache (Gao et al., 2021): its pairs' NLLs without
    autograd, the gradient of its share with respect to them, then each chunk again with
    autograd; dropout replays the first pass's random numbers. The engine decides when
    gradients are synchronised across workers (once per step) and may ask for padding."""
    pairs = group_pairs(groups, loss.in_batch_negatives)
    layouts = qpeft.encode(pairs.queries, pairs.docs)
    device = qpeft.backbone.device
    index, valid = pairs.index.to(device), pairs.valid.to(device)
    scale = LossScale.of(pairs.valid)
    plan = plan_micro_batches(
        layouts, pairs, token_budget, engine.splits_groups, qpeft.backprop_tokens
    )
    calls = sum(len(micro.chunks) for micro in plan)
    padding = engine.padding_micro_batches(calls)
    done = 0

    def nll_of(rows: list[int]) -> torch.Tensor:
        # Prefixes in columns of their own: where no trained weight shapes them (Q-PEFT-R
        # and -A with suffix hints) they run without gradients and the backward pass covers
        # the hint block, the question and the label only (`qpeft.scoring.model.run_decoder`).
        batch = qpeft.template.collate([layouts[i] for i in rows])
        return -engine.module(batch.to(device)).float()

    def micro_step():
        """The engine's context for the next forward-and-backward (DDP decides in the
        forward whether the backward will all-reduce, so both go inside)."""
        nonlocal done
        done += 1
        return engine.micro_step(last=done == calls + padding)

    total = 0.0
    for micro in plan:
        if len(micro.chunks) == 1:
            (rows,) = micro.chunks
            with micro_step():
                nll = torch.zeros(len(layouts), device=device).index_put(
                    (torch.tensor(rows, device=device),), nll_of(rows)
                )
                share = ranking_loss(nll[index[micro.groups]], valid[micro.groups], loss, scale)
                engine.backward(share)
            total += share.item()
            continue
        states, nll = [], torch.zeros(len(layouts), device=device)
        with torch.no_grad():
            for chunk in micro.chunks:
                states.append(_rng_state(device))
                nll[chunk] = nll_of(chunk)
        after_first_pass = _rng_state(device)
        nll.requires_grad_(True)
        share = ranking_loss(nll[index[micro.groups]], valid[micro.groups], loss, scale)
        (grad,) = torch.autograd.grad(share, nll)
        for chunk, state in zip(micro.chunks, states, strict=True):
            _set_rng_state(device, state)
            with micro_step():
                engine.backward((nll_of(chunk) * grad[chunk]).sum())
        _set_rng_state(device, after_first_pass)
        total += share.item()
    for _ in range(padding):  # ranks whose collectives must pair up: zero-weight repeats
        with micro_step():
            engine.backward(nll_of(plan[-1].chunks[-1]).sum() * 0.0)
    cut = sum(layout.query_tokens_cut for layout in layouts)
    return StepResult(total, len(layouts), calls + padding, cut)


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@torch.no_grad()
def dev_loss(qpeft: QPeftModel, groups: list[TrainingGroup], loss: LossConfig, size: int) -> float:
    """Mean loss over dev groups, in eval mode (no dropout), batches of `size` groups."""
    was_training = qpeft.adapter.training
    qpeft.adapter.eval()
    try:
        values = [
            batch_loss(qpeft, qpeft, groups[i : i + size], loss).item()
            for i in range(0, len(groups), size)
        ]
    finally:
        qpeft.adapter.train(was_training)
    return sum(values) / max(1, len(values))


def dev_run(
    qpeft: QPeftModel, candidates: list[dict], depth: int, scoring: ScoringConfig
) -> dict[str, dict[str, float]]:
    """Rerank each query's top-`depth` candidates with the shared scorer."""
    rows = [r for r in candidates if r["rank"] <= depth]
    scores = score_with(qpeft, [r["query"] for r in rows], [r["text"] for r in rows], scoring)
    run: dict[str, dict[str, float]] = {}
    for row, score in zip(rows, scores, strict=True):
        run.setdefault(row["query_id"], {})[row["doc_id"]] = score
    return run


def parameter_groups(adapter: torch.nn.Module, settings: TrainSettings) -> list[dict]:
    """AdamW groups: E' rows (`embed.*`) at `embedding_lr`, the hint gate (`gate.*`) at
    `gate_lr`, everything else at `lr`."""
    rates = {
        "module": settings.lr,
        "embedding": settings.embedding_lr if settings.embedding_lr is not None else settings.lr,
        "gate": settings.gate_lr if settings.gate_lr is not None else DEFAULT_GATE_LR,
    }
    params: dict[str, list] = {name: [] for name in rates}
    for name, param in adapter.named_parameters():
        if param.requires_grad:
            params[_group_of(name)].append(param)
    return [{"params": params[g], "lr": lr, "name": g} for g, lr in rates.items() if params[g]]


def _group_of(parameter_name: str) -> str:
    if parameter_name.startswith("embed."):
        return "embedding"
    return "gate" if parameter_name.startswith("gate.") else "module"


def warmup_steps(settings: TrainSettings, total_steps: int) -> int:
    return math.ceil(settings.warmup_ratio * total_steps)


def make_optimizer(adapter: torch.nn.Module, settings: TrainSettings, total_steps: int):
    """AdamW over `parameter_groups`, linear warmup, then linear or cosine decay (or none)."""
    optimizer = torch.optim.AdamW(
        parameter_groups(adapter, settings), lr=settings.lr, weight_decay=settings.weight_decay
    )
    warmup = warmup_steps(settings, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if settings.decay == "none" or total_steps <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total_steps - warmup))
        return (
            1.0 - progress
            if settings.decay == "linear"
            else 0.5 * (1 + math.cos(math.pi * progress))
        )

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainState:
    """Where training is; saved as JSON in every checkpoint."""

    step: int = 0
    epoch: int = 0
    best_ndcg10: float = -1.0  # dev NDCG@10 of the kept adapter
    best_score: float | None = None  # what `train.select_on` compares (higher is better)
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped_early: bool = False
    diverged_at_step: int | None = None  # the step whose loss was not finite
    history: list | None = None
    resumed_at: list | None = None  # steps at which a run picked up from a checkpoint

    def save(self, directory: Path) -> None:
        (directory / "train_state.json").write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, directory: Path) -> TrainState:
        state = cls(**json.loads((directory / "train_state.json").read_text()))
        if state.best_score is None and state.best_epoch >= 0:  # saved before select_on
            state.best_score = state.best_ndcg10
        return state


def save_optimizer(directory: Path, optimizer, scheduler) -> None:
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        directory / "optimizer.pt",
    )


def load_optimizer(directory: Path, optimizer, scheduler) -> None:
    # weights_only: a restricted unpickler that loads tensors and plain containers only.
    state = torch.load(directory / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])


@dataclass
class DevSet:
    """What every rank evaluates on: the dev groups (dev loss), their top candidates
    (NDCG@10) and judgments."""

    groups: list[TrainingGroup]
    candidates: list[dict]
    qrels: Qrels


def load_dev(
    prepared: PreparedData, settings: TrainSettings, skip: Sequence[str] = (), split: str = "dev"
) -> DevSet:
    """The dev split (`pseudo_dev` where the data has no judged dev query), read with pyarrow
    in each worker: every rank needs all of it and it is small (capped by
    `train.dev_max_queries`); three Ray Data executions per worker took about a minute on a
    2-core machine."""
    queries = [q for q in prepared.query_ids(split) if q not in set(skip)]
    if settings.dev_max_queries:
        queries = queries[: settings.dev_max_queries]
    chosen = pc.field("query_id").isin(pa.array(queries, pa.string()))
    groups = prepared.table(prepared.GROUPS, filter=chosen).to_pylist()
    candidates = prepared.table(
        prepared.CANDIDATES, filter=chosen & (pc.field("rank") <= settings.dev_depth)
    ).to_pylist()
    return DevSet(
        groups=groups_from_rows(
            sorted(groups, key=lambda r: r["query_id"]), settings.max_negatives
        ),
        candidates=candidates,
        qrels=prepared.qrels(queries),
    )


def my_slice(items: list, rank: int, world: int) -> list:
    return items[rank::world]


def all_gather(obj, world: int) -> list:
    """`obj` from every rank (torch.distributed), in rank order."""
    if world == 1 or not dist.is_initialized():
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


# Dev positives whose hint vectors the dev check measures (`adapter_diagnostics`).
DIAGNOSTIC_PAIRS = 16


def evaluate_dev(
    qpeft: QPeftModel,
    dev: DevSet,
    settings: TrainSettings,
    loss: LossConfig,
    scoring: ScoringConfig,
    rank: int = 0,
    world: int = 1,
) -> dict:
    """Dev loss, NDCG@10 and the fusion weight chosen on them, each rank scoring a slice
    of the dev queries; every rank gets the same figures."""
    queries = sorted({r["query_id"] for r in dev.candidates})
    mine = set(my_slice(queries, rank, world))
    run = dev_run(
        qpeft, [r for r in dev.candidates if r["query_id"] in mine], settings.dev_depth, scoring
    )
    groups = my_slice(dev.groups, rank, world)
    part_loss = dev_loss(qpeft, groups, loss, settings.queries_per_batch) if groups else 0.0
    merged: dict = {}
    losses = []
    for part_run, part, n in all_gather((run, part_loss, len(groups)), world):
        merged.update(part_run)
        losses += [part] * n
    first_stage: dict[str, dict[str, float]] = {}
    for row in dev.candidates:
        first_stage.setdefault(row["query_id"], {})[row["doc_id"]] = row["first_stage_score"]
    weight, curve = choose_weight(merged, first_stage, dev.qrels)
    sample = dev.groups[:DIAGNOSTIC_PAIRS]
    diagnostics = adapter_diagnostics(
        qpeft, [g.query for g in sample], [g.positive[1] for g in sample]
    )
    by_query = ndcg10_by_query(dev.qrels, merged)
    return {
        **diagnostics,
        "dev_ndcg10": mean(list(by_query.values())),
        # Per query, rounded: what a paired test between two runs' dev checks reads.
        "dev_ndcg10_by_query": {q: round(v, 5) for q, v in sorted(by_query.items())},
        "dev_loss": sum(losses) / max(1, len(losses)),
        "dev_queries": len(merged),
        # Interpolation with the first stage, its weight chosen on these dev queries.
        "fusion_weight": weight,
        "dev_ndcg10_fused": curve[weight],
    }


def selection_score(metrics: dict, select_on: str) -> float:
    """The dev check's figure that `train.select_on` keeps adapters by, higher is better."""
    return metrics["dev_ndcg10"] if select_on == "dev_ndcg10" else -metrics["dev_loss"]


def publish_if_best(
    engine,
    qpeft: QPeftModel,
    state: TrainState,
    metrics: dict,
    destination: str,
    rank: int,
    training: dict,
    select_on: str = "dev_ndcg10",
) -> bool:
    """Publish the adapter to `destination` (the run's `adapter/`) if it beats the best so
    far on `select_on` (dev NDCG@10 or dev loss), and say whether. Step 0 is a candidate
    like any epoch, so training can only keep or improve the dev figure it started from."""
    score = selection_score(metrics, select_on)
    if state.best_score is not None and score <= state.best_score:
        return False
    state.best_score, state.best_ndcg10, state.best_epoch, state.bad_epochs = (
        score,
        metrics["dev_ndcg10"],
        state.epoch,
        0,
    )
    with engine.gathered():
        if rank == 0:
            local = Path(tempfile.mkdtemp(prefix="qpeft-best-")) / "adapter"
            save_adapter(
                qpeft,
                local,
                extra={
                    "training": training,
                    "dev_ndcg10": metrics["dev_ndcg10"],
                    "dev_loss": metrics["dev_loss"],
                    "selected_on": select_on,
                    "selection_score": score,
                    "epoch": state.epoch,
                    "fusion": {
                        "weight": metrics["fusion_weight"],
                        "dev_ndcg10": metrics["dev_ndcg10_fused"],
                        "normalisation": "minmax per query",
                    },
                },
            )
            # The config goes last: a reader never takes a half-copied folder for an adapter.
            storage.copy(local, destination, markers=(CONFIG_NAME,))
            shutil.rmtree(local.parent, ignore_errors=True)
    return True


def end_epoch(
    engine,
    qpeft: QPeftModel,
    state: TrainState,
    metrics: dict,
    destination: str,
    rank: int,
    training: dict,
    settings: TrainSettings,
) -> None:
    """Keep the epoch's adapter if it is the best on `train.select_on`; otherwise count a
    bad epoch and stop after `train.patience` of them."""
    if not publish_if_best(
        engine, qpeft, state, metrics, destination, rank, training, settings.select_on
    ):
        state.bad_epochs += 1
        state.stopped_early = state.bad_epochs >= settings.patience
    state.history.append(metrics)


def write_checkpoint(directory: Path, engine, qpeft: QPeftModel, state: TrainState, rank: int):
    """A checkpoint's contents: the current adapter, the engine's optimiser state and the
    training state. The best adapter is not copied in: it lives in the run's `adapter/`."""
    with engine.gathered():
        if rank == 0:  # the adapter alone: LoRA's peft/ copy is for the exported one
            save_adapter(qpeft, directory / "adapter", export=False)
    engine.save_state(directory, rank)
    if rank == 0:
        state.save(directory)


def restore_checkpoint(directory: Path, engine, qpeft: QPeftModel, run: TrainingRun) -> TrainState:
    """Load what `write_checkpoint` saved. A best adapter published after this checkpoint
    was taken still counts, so a worse epoch cannot replace it."""
    with engine.gathered():
        weights = load_file(
            str(directory / "adapter" / WEIGHTS_NAME), device=str(qpeft.backbone.device)
        )
        qpeft.adapter.load_state_dict(weights)
    engine.load_state(directory)
    state = TrainState.load(directory)
    state.resumed_at = [*(state.resumed_at or []), state.step]
    if run.has_adapter():
        saved = read_adapter_config(run.adapter_dir)
        score = saved.get("selection_score", saved.get("dev_ndcg10"))
        if score is not None and (state.best_score is None or score > state.best_score):
            state.best_score, state.best_ndcg10 = score, saved["dev_ndcg10"]
            state.best_epoch = saved["epoch"]
    return state
