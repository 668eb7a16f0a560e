"""Fit an adapter with Ray Train: DeepSpeed ZeRO on GPUs, DDP (gloo) on CPUs.

`qpeft train --config FILE` reads the training groups of a prepared directory through Ray
Data (one shard per worker), trains with the paper's loss, evaluates on the dev split after
every epoch (dev loss and NDCG@10 through the shared scorer), stops early with patience and
exports the best adapter to `<storage_path>/<name>/adapter`. Checkpoints go through
`ray.train.report`; re-running with the same name resumes from the last one. `storage_path`
and `data.prepared_dir` may be cloud URIs (s3://, gs://) that every node reads and writes;
`metrics.json`, written last, marks a finished run.
"""

from __future__ import annotations

import importlib.util
import math
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.train
import torch
from ray.data.expressions import col
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig
from ray.train.torch import TorchConfig, TorchTrainer

from pipelines.cli import run_as_module, step_config
from pipelines.ray_setup import (
    RaySection,
    check_cpu_headroom,
    init_ray,
)
from pipelines.report import plot_dev_curve
from pipelines.step import claimed
from qpeft import storage
from qpeft.adapters import adapter_class
from qpeft.artifacts import PreparedData, TrainingRun, without
from qpeft.config import ConfigError, ModelConfig, QPeftConfig, conflict, from_dict, to_dict
from qpeft.data.pseudo_queries import PSEUDO_DEV, PSEUDO_TRAIN
from qpeft.data.splits import nested_subset
from qpeft.input_check import QueryCheck, check_queries
from qpeft.lm.backbone import load_backbone, load_tokenizer, pin_model
from qpeft.lm.template import Template
from qpeft.methods import METHODS
from qpeft.scoring.model import QPeftModel
from qpeft.training.engines import DeepSpeedEngine, TorchEngine
from qpeft.training.loop import (
    TrainSettings,
    TrainState,
    all_gather,
    backward_step,
    end_epoch,
    evaluate_dev,
    groups_from_rows,
    load_dev,
    publish_if_best,
    restore_checkpoint,
    write_checkpoint,
)


@dataclass
class DataSection:
    prepared_dir: str = "runs/prepare/cranfield"
    # Which queries train and which the dev check reads: judged (splits train, dev), pseudo
    # (pseudo_train, pseudo_dev: `prepare.pseudo_queries`), or auto: judged where the data
    # has them, pseudo where not (each of the two decided on its own).
    queries: Literal["auto", "judged", "pseudo"] = "auto"


@dataclass(frozen=True)
class QuerySplits:
    train: str
    dev: str


def query_splits(data: DataSection) -> QuerySplits:
    """The splits that `data.queries` names in this prepared folder; an error naming the key
    where the training split has no group."""
    prepared = PreparedData(data.prepared_dir).require_complete("data.prepared_dir")
    groups = set(prepared.table(prepared.GROUPS, ["split"]).column("split").to_pylist())
    if data.queries == "auto":
        has_dev = prepared.table(prepared.QUERIES, ["split"], pc.field("split") == "dev")
        splits = QuerySplits(
            "train" if "train" in groups else PSEUDO_TRAIN,
            "dev" if has_dev.num_rows else PSEUDO_DEV,
        )
    else:
        judged = data.queries == "judged"
        splits = QuerySplits("train" if judged else PSEUDO_TRAIN, "dev" if judged else PSEUDO_DEV)
    if splits.train not in groups:
        raise ConfigError(
            f"data.queries: {data.queries}, but {data.prepared_dir} has no training group of "
            f"split {splits.train!r}: prepare judged training queries, or pseudo-queries "
            "(prepare.pseudo_queries)"
        )
    return splits


@dataclass
class ScalingSection:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    # PACK fills a node first; SPREAD / STRICT_SPREAD put workers on different nodes.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    def validate(self) -> None:
        if self.num_workers < 1:
            raise ConfigError("scaling.num_workers: must be >= 1")


@dataclass
class RunSection:
    name: str = "qpeft-train"
    storage_path: str = "runs/train"
    max_failures: int = 1
    num_to_keep: int = 2
    overwrite: bool = False  # replace a run folder made with another configuration


@dataclass
class TrainRunConfig(QPeftConfig):
    """The library's sections (model, template, adapter, loss, scoring) plus training's."""

    train: TrainSettings = field(default_factory=TrainSettings)
    data: DataSection = field(default_factory=DataSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    run: RunSection = field(default_factory=RunSection)
    ray: RaySection = field(default_factory=RaySection)

    def validate(self) -> None:
        if not METHODS[self.adapter.method].trainable:
            raise ConfigError(f"adapter.method: {self.adapter.method} has nothing to train")
        check_recipe(self)


def check_recipe(cfg: TrainRunConfig) -> None:
    """Settings of different sections that contradict each other, refused at config time
    (a silently ignored option would make a recipe study compare the same run twice)."""
    conflict(
        cfg.train.gate_lr is not None and not cfg.adapter.hint_gate,
        ("train.gate_lr", cfg.train.gate_lr),
        ("adapter.hint_gate", False),
        "ungated hints have no gate to train",
    )
    if cfg.loss.in_batch_negatives and cfg.train.queries_per_batch == 1:
        raise ConfigError(
            f"loss.in_batch_negatives: {cfg.loss.in_batch_negatives} contradicts "
            "train.queries_per_batch: 1 (in-batch negatives come from the other queries of "
            "a worker's batch, and there are none); set loss.in_batch_negatives: 0"
        )


# How to run, not what is trained: a run resumed with other values of these is the same run.
RUN_POLICY_KEYS = (
    "ray",
    "run.max_failures",
    "run.num_to_keep",
    "run.overwrite",
    "train.checkpoint_every",
    "train.fail_at_step",
    "model.num_threads",
    "scaling.cpus_per_worker",
    "scaling.placement_strategy",
)


def training_query_ids(cfg: TrainRunConfig, split: str, skip: list[str]) -> list[str]:
    """The training queries this run uses: the train split's groups less those the
    long-query policy skips, cut to `train.max_train_queries` (a nested subset)."""
    prepared = PreparedData(cfg.data.prepared_dir)
    ids = prepared.table(prepared.GROUPS, ["query_id"], pc.field("split") == split)
    ids = sorted(set(ids.column("query_id").to_pylist()) - set(skip))
    if cfg.train.max_train_queries is not None:
        ids = nested_subset(ids, cfg.train.max_train_queries, cfg.train.seed)
    return ids


def training_token_ids(
    cfg: TrainRunConfig, template: Template, split: str, query_ids: list[str]
) -> list[int] | None:
    """The vocabulary rows of E' that training can reach (the method decides which: query
    tokens, hint words, and for Q-PEFT-R the documents' tokens), found once in the driver
    so that every worker builds the same sparse E'. `query_ids`: the groups it trains on."""
    prepared = PreparedData(cfg.data.prepared_dir)
    rows = prepared.table(
        prepared.GROUPS,
        ["query_id", "query", "positive_text", "negative_texts"],
        pc.field("split") == split,
    ).to_pylist()
    used = set(query_ids)
    rows = [r for r in rows if r["query_id"] in used]
    docs = {r["positive_text"] for r in rows} | {t for r in rows for t in r["negative_texts"]}
    return adapter_class(cfg.adapter.method).trainable_token_ids(
        template,
        template.tokenize_queries(sorted({r["query"] for r in rows})) if rows else [],
        template.tokenize_docs(sorted(docs)) if docs else [],
    )


def resolve_engine(cfg: TrainRunConfig) -> TrainRunConfig:
    """`train.engine` made concrete (auto: DeepSpeed on GPUs, DDP on CPUs) and checked in
    the driver, before any worker starts; the resolved engine is part of the run's stamp,
    so a checkpoint is never resumed by the other engine."""
    settings = cfg.train
    engine = settings.engine
    if engine == "auto":
        engine = "deepspeed" if cfg.scaling.use_gpu else "ddp"
    if engine == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(
                "train.engine: deepspeed needs DeepSpeed, the `gpu` extra: "
                "pip install 'qpeft-ray[gpu]'"
            )
        if cfg.model.dtype == "float16" and not cfg.scaling.use_gpu:
            raise ConfigError(
                "model.dtype: float16 on CPUs is refused by DeepSpeed; use bfloat16 or float32"
            )
        if settings.zero_stage == 3 and cfg.adapter.method == "lora":
            raise ConfigError(
                "train.zero_stage: 3 partitions modules inside the frozen LM for lora, which "
                "this project does not support; use zero_stage 2 (or train.engine: ddp)"
            )
    how = f"ZeRO-{settings.zero_stage}" if engine == "deepspeed" else "DistributedDataParallel"
    where = "GPUs, NCCL" if cfg.scaling.use_gpu else "CPUs, gloo"
    print(f"[train] engine: {engine} ({how}; {where}; train.engine: {settings.engine})", flush=True)
    return replace(cfg, train=replace(settings, engine=engine))


def check_training_queries(cfg: TrainRunConfig, splits: QuerySplits) -> QueryCheck:
    """Every train and dev query against the template and its long-query policy, in the
    driver, with the tokenizer alone: a data or template error stops the run here, in
    seconds, instead of in Ray workers that Ray Train would restart as if a node died."""
    prepared = PreparedData(cfg.data.prepared_dir)
    wanted = pa.array([splits.train, splits.dev], pa.string())
    rows = prepared.table(
        prepared.QUERIES, ["query_id", "text"], pc.field("split").isin(wanted)
    ).to_pylist()
    rows += [r for r in prepared.pseudo_queries() if r["split"] in (splits.train, splits.dev)]
    template = Template(
        cfg.template, load_tokenizer(cfg.model), cfg.adapter.method, cfg.adapter.hint_gate
    )
    where = prepared.path(prepared.QUERIES)
    return check_queries(template, cfg.adapter, ((r["query_id"], r["text"]) for r in rows), where)


def describe_query_check(check: QueryCheck, template) -> str:
    return (
        f"{check.queries} train/dev queries (longest {check.longest_tokens} tokens); "
        f"{check.over_limit} over template.max_query_tokens={template.max_query_tokens}: "
        f"{check.truncated} truncated ({check.tokens_cut} tokens cut), "
        f"{len(check.skipped)} skipped"
    )


def save_checkpoint(engine, qpeft: QPeftModel, state: TrainState, rank: int, metrics: dict) -> None:
    """Report metrics to Ray Train with a checkpoint of the current adapter, optimiser and
    training state."""
    # Ray gets the scalar figures: it would spread a per-query mapping over one column per
    # query of Tune's tables (the state's history keeps it).
    scalars = {key: value for key, value in metrics.items() if not isinstance(value, dict)}
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(Path(tmp), engine, qpeft, state, rank)
        ray.train.report(scalars, checkpoint=Checkpoint.from_directory(tmp))


def allreduced_bytes(engine) -> int | None:
    counter = getattr(engine, "allreduced", None)
    return counter.bytes if counter is not None else None


def training_record(cfg: TrainRunConfig, splits: QuerySplits) -> dict:
    """What the adapter's config and model card say about how it was trained."""
    settings = cfg.train
    return {
        "data": cfg.data.prepared_dir,
        "split": splits.train,
        "dev_split": splits.dev,
        "settings": {
            "loss": cfg.loss.kind,
            "epochs": settings.epochs,
            "queries per step": settings.queries_per_batch * cfg.scaling.num_workers,
            "hard negatives": settings.max_negatives,
            "lr": settings.lr,
            "embedding lr": settings.embedding_lr,
            "gate lr": settings.gate_lr,
        },
    }


def train_loop(loop_config: dict) -> None:
    cfg = from_dict(TrainRunConfig, loop_config["config"])
    settings = cfg.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(settings.seed + rank)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.set_device(device)
    backbone = load_backbone(replace(cfg.model, device=str(device)))
    if settings.gradient_checkpointing:
        backbone.model.gradient_checkpointing_enable({"use_reentrant": False})
    ids = loop_config["trainable_ids"]

    def build_model() -> QPeftModel:
        return QPeftModel.build(
            backbone, cfg.template, cfg.adapter, torch.tensor(ids) if ids is not None else None
        )

    qpeft = build_model()
    qpeft.adapter.train()
    total_steps = loop_config["steps_per_epoch"] * settings.epochs
    if settings.max_steps:
        total_steps = min(total_steps, settings.max_steps)
    if settings.engine == "deepspeed":
        engine = DeepSpeedEngine(qpeft, settings, total_steps, world)
    else:
        engine = TorchEngine(qpeft, settings, total_steps, distributed=world > 1)

    state = TrainState(history=[])
    run = TrainingRun(storage.join(cfg.run.storage_path, cfg.run.name))
    best_out = run.adapter_dir
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as ckpt:
            state = restore_checkpoint(Path(ckpt), engine, qpeft, run)
        if rank == 0:
            print(f"[train] resumed at step {state.step} (epoch {state.epoch})", flush=True)

    splits = QuerySplits(**loop_config["splits"])
    dev = load_dev(
        PreparedData(cfg.data.prepared_dir), settings, loop_config["skip_query_ids"], splits.dev
    )
    training = training_record(cfg, splits)
    shard = ray.train.get_dataset_shard("train")
    steps_per_epoch = loop_config["steps_per_epoch"]
    start = time.perf_counter()
    first_step = state.step

    if state.step == 0 and not state.history:
        # Step 0 is a candidate like any epoch: training can then only keep or improve the
        # dev ranking it started from (an untrained adapter ranks about as zero-shot does).
        with engine.eval_model(build_model) as model:
            metrics = evaluate_dev(model, dev, settings, cfg.loss, cfg.scoring, rank, world)
        metrics.update(step=0, epoch=0)
        publish_if_best(engine, qpeft, state, metrics, best_out, rank, training, settings.select_on)
        state.history.append(metrics)
        # Reported like an epoch: a Tune trial's best then counts step 0 (the adapter it
        # may export), and a restart after this point skips the evaluation.
        save_checkpoint(engine, qpeft, state, rank, metrics)
        if rank == 0:
            print(
                f"[train] step 0: dev NDCG@10 {metrics['dev_ndcg10']:.4f} "
                f"(fused {metrics['dev_ndcg10_fused']:.4f} at weight {metrics['fusion_weight']})",
                flush=True,
            )

    while state.epoch < settings.epochs and not state.stopped_early:
        done_in_epoch = state.step - state.epoch * steps_per_epoch
        throughput = {"seconds": 0.0, "pairs": 0, "query_tokens_cut": 0, "steps": 0}
        allreduced_before = allreduced_bytes(engine)
        batches = shard.iter_batches(
            batch_size=settings.queries_per_batch,
            batch_format="pyarrow",
            drop_last=True,
            local_shuffle_buffer_size=256,
            local_shuffle_seed=settings.seed + state.epoch,
        )
        for index, batch in enumerate(batches):
            if index >= steps_per_epoch:
                break
            if index < done_in_epoch:  # resumed mid-epoch: skip the steps already taken
                continue
            if settings.fail_at_step == state.step and rank == world - 1 and not restored:
                print(f"[train] injected failure on rank {rank} at step {state.step}", flush=True)
                os._exit(1)
            if settings.max_steps and state.step >= settings.max_steps:
                break
            tick = time.perf_counter()
            groups = groups_from_rows(
                batch.to_pylist(), settings.max_negatives, state.epoch, settings.seed
            )
            result = backward_step(engine, qpeft, groups, cfg.loss, settings.micro_batch_tokens)
            if not all(math.isfinite(loss) for loss in all_gather(result.loss, world)):
                # Every rank sees every rank's loss, so all of them stop here together,
                # before a NaN update: the weights are still those of the last good step,
                # and the checkpoint taken of them says where training stopped.
                state.diverged_at_step = state.step + 1
                save_checkpoint(
                    engine,
                    qpeft,
                    state,
                    rank,
                    {"step": state.step, "diverged_at_step": state.diverged_at_step},
                )
                if rank == 0:
                    print(
                        f"[train] the loss is not finite at step {state.diverged_at_step} "
                        f"(epoch {state.epoch + 1}): stopped without taking that step",
                        flush=True,
                    )
                return
            engine.step()
            state.step += 1
            seconds = time.perf_counter() - tick
            pairs = result.pairs
            throughput["query_tokens_cut"] += result.query_tokens_cut
            throughput["steps"] += 1
            if state.step - first_step > 1:  # the first step of a process includes warm-up
                throughput["seconds"] += seconds
                throughput["pairs"] += pairs * world  # ranks step in lockstep (all-reduce)
            if rank == 0:
                rate = (state.step - first_step) / (time.perf_counter() - start)
                eta = (total_steps - state.step) / rate if rate else 0.0
                print(
                    f"[train] step {state.step}/{total_steps} epoch {state.epoch + 1} "
                    f"loss {result.loss:.4f} lr {engine.lr:.2e} "
                    f"{pairs * world / seconds:.1f} pairs/s ({result.micro_batches} micro-batches) "
                    f"ETA {eta:.0f}s",
                    flush=True,
                )
            if state.step % settings.checkpoint_every == 0 and index + 1 < steps_per_epoch:
                save_checkpoint(
                    engine,
                    qpeft,
                    state,
                    rank,
                    {"step": state.step, "epoch": state.epoch, "loss": result.loss},
                )
        state.epoch += 1
        if settings.max_steps and state.step >= settings.max_steps:
            state.epoch = settings.epochs  # the step budget ends training after this epoch
        with engine.eval_model(build_model) as model:
            metrics = evaluate_dev(model, dev, settings, cfg.loss, cfg.scoring, rank, world)
        metrics.update(
            step=state.step,
            epoch=state.epoch,
            train_pairs_per_s=throughput["pairs"] / max(throughput["seconds"], 1e-9),
            # Gradient bytes each rank sent through DDP's all-reduce per optimiser step
            # (None under DeepSpeed, which reduces inside its own engine).
            allreduce_mib_per_step=(
                (allreduced_bytes(engine) - allreduced_before) / 2**20 / throughput["steps"]
                if throughput["steps"] and allreduced_bytes(engine) is not None
                else None
            ),
            # Query tokens the long-query policy cut from this epoch's training pairs.
            query_tokens_cut=sum(all_gather(throughput["query_tokens_cut"], world)),
            peak_rss_mib=all_gather(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, world
            ),
            worker_nodes=all_gather(ray.get_runtime_context().get_node_id()[:12], world),
        )
        end_epoch(engine, qpeft, state, metrics, best_out, rank, training, settings)
        if rank == 0:
            print(
                f"[train] epoch {state.epoch}: dev NDCG@10 {metrics['dev_ndcg10']:.4f} "
                f"(fused {metrics['dev_ndcg10_fused']:.4f} at weight {metrics['fusion_weight']}) "
                f"dev loss {metrics['dev_loss']:.4f} (best {state.best_ndcg10:.4f} "
                f"at epoch {state.best_epoch})",
                flush=True,
            )
        save_checkpoint(engine, qpeft, state, rank, metrics)


def build_datasets(cfg: TrainRunConfig, split: str, query_ids: list[str]) -> tuple[dict, int]:
    """The training groups of `query_ids` and the number of optimizer steps per epoch."""
    groups = ray.data.read_parquet(PreparedData(cfg.data.prepared_dir).path(PreparedData.GROUPS))
    train = groups.filter(expr=(col("split") == split) & col("query_id").is_in(query_ids))
    n_train = train.count()
    per_step = cfg.train.queries_per_batch * cfg.scaling.num_workers
    if n_train < per_step:
        raise ConfigError(
            f"train.queries_per_batch: {n_train} training groups cannot fill one step of "
            f"{cfg.train.queries_per_batch} queries x {cfg.scaling.num_workers} workers"
        )
    return {"train": train.random_shuffle(seed=cfg.train.seed)}, n_train // per_step


def run_stamp(cfg: TrainRunConfig, splits: QuerySplits) -> dict:
    """What the run's folder is stamped with: the config less how to run it, and the splits
    it trains and checks on where they are not the judged ones (runs from before pseudo-
    queries keep their stamps)."""
    stamp = without(to_dict(cfg), (*RUN_POLICY_KEYS, "data.queries"))
    if splits != QuerySplits("train", "dev"):
        stamp["data"]["splits"] = asdict(splits)
    return stamp


def train(cfg: TrainRunConfig, callbacks: list | None = None) -> dict:
    """Run (or resume) training; returns the final metrics and where the adapter is.

    The run's folder is stamped with its config: a finished run is not started again, an
    unfinished one resumes from its last checkpoint (Ray Train does that by name), and one
    made with another configuration is refused (`run.overwrite` replaces it).
    `callbacks` go to Ray Train's RunConfig (a Tune trial passes TuneReportCallback)."""
    pinned = pin_model(cfg.model)  # workers only read the model cache from here on
    cfg = replace(
        cfg,
        # Where the model is cached is not part of the run: keep the user's cache_dir.
        model=replace(pinned, cache_dir=cfg.model.cache_dir),
        data=replace(cfg.data, prepared_dir=storage.absolute(cfg.data.prepared_dir)),
        run=replace(cfg.run, storage_path=storage.absolute(cfg.run.storage_path)),
    )
    cfg = resolve_engine(cfg)
    splits = query_splits(cfg.data)
    print(
        f"[train] training queries: split {splits.train}; dev check: split {splits.dev} "
        f"(data.queries: {cfg.data.queries})",
        flush=True,
    )
    query_check = check_training_queries(cfg, splits)
    print(f"[train] {describe_query_check(query_check, cfg.template)}", flush=True)
    out = TrainingRun(storage.join(cfg.run.storage_path, cfg.run.name))
    with claimed(out, run_stamp(cfg, splits), cfg.run.overwrite):
        if out.is_complete():
            print(f"[train] {out.root} is complete; nothing to do", flush=True)
            return out.metrics()
        return fit(cfg, pinned, out, query_check, splits, callbacks)


def fit(
    cfg: TrainRunConfig,
    pinned: ModelConfig,
    out: TrainingRun,
    query_check: QueryCheck,
    splits: QuerySplits,
    callbacks: list | None,
) -> dict:
    """The body of `train` once its inputs are checked and it holds the run's folder."""
    template = Template(
        cfg.template, load_tokenizer(cfg.model), cfg.adapter.method, cfg.adapter.hint_gate
    )
    query_ids = training_query_ids(cfg, splits.train, query_check.skipped)
    print(f"[train] {len(query_ids)} training queries", flush=True)
    trainable_ids = training_token_ids(cfg, template, splits.train, query_ids)
    init_ray(cfg.ray)
    check_cpu_headroom(
        cfg.scaling.num_workers * cfg.scaling.cpus_per_worker,
        f"scaling: {cfg.scaling.num_workers} workers x {cfg.scaling.cpus_per_worker} CPUs",
        "lower scaling.cpus_per_worker (e.g. 0.5 on a 2-core machine)",
    )
    datasets, steps_per_epoch = build_datasets(cfg, splits.train, query_ids)
    scaling = ray.train.ScalingConfig(
        num_workers=cfg.scaling.num_workers,
        use_gpu=cfg.scaling.use_gpu,
        resources_per_worker={
            "CPU": cfg.scaling.cpus_per_worker,
            **({"GPU": 1} if cfg.scaling.use_gpu else {}),
        },
        placement_strategy=cfg.scaling.placement_strategy,
    )
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "config": to_dict(replace(cfg, model=pinned)),
            "steps_per_epoch": steps_per_epoch,
            "skip_query_ids": query_check.skipped,
            "trainable_ids": trainable_ids,
            "splits": asdict(splits),
        },
        scaling_config=scaling,
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=cfg.run.storage_path,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.num_to_keep),
            callbacks=callbacks,
        ),
        datasets=datasets,
    )
    began = time.perf_counter()
    result = trainer.fit()
    adapter = out.adapter_dir  # published by rank 0 at each new best
    with result.checkpoint.as_directory() as ckpt:
        state = TrainState.load(Path(ckpt))
    summary = {
        "adapter": adapter,
        "best_dev_ndcg10": state.best_ndcg10,
        "best_epoch": state.best_epoch,
        "steps": state.step,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        # The loss turned NaN (or infinite) at this step; training stopped before it, and
        # the run's last checkpoint is the last good one (at `steps`).
        "diverged_at_step": state.diverged_at_step,
        "resumed_at": state.resumed_at or [],
        "train_queries": len(query_ids),
        "train_split": splits.train,
        "dev_split": splits.dev,
        # This invocation's wall time (a resumed run's earlier sessions are not in it).
        "wall_seconds": round(time.perf_counter() - began, 1),
        "history": state.history,
        "query_check": query_check.counts(),
        "config": to_dict(cfg),
    }
    with tempfile.TemporaryDirectory() as tmp:
        curve = Path(tmp) / out.DEV_CURVE
        if plot_dev_curve(state.history, f"{cfg.run.name}: {cfg.adapter.method}", curve):
            storage.copy(curve, out.path(out.DEV_CURVE))
    out.write_metrics(summary)  # written last
    return summary


def main(argv: list[str] | None = None) -> None:
    cfg = step_config(TrainRunConfig, __doc__.splitlines()[0], argv)
    summary = train(cfg)
    if summary.get("diverged_at_step"):
        raise SystemExit(
            f"[train] the training loss turned NaN at step {summary['diverged_at_step']}: "
            f"stopped there; the last good checkpoint is step {summary['steps']} and the "
            f"best adapter (dev NDCG@10 {summary['best_dev_ndcg10']:.4f}, epoch "
            f"{summary['best_epoch']}) is in {summary['adapter']}. Lower train.lr, or set "
            "train.grad_clip, and start again with run.overwrite: true"
        )
    print(
        f"[train] best dev NDCG@10 {summary['best_dev_ndcg10']:.4f} at epoch "
        f"{summary['best_epoch']} ({summary['steps']} steps); adapter: {summary['adapter']}"
    )


if __name__ == "__main__":
    sys.exit(run_as_module("pipelines.train"))
