"""The whole pipeline on the embedded default: `qpeft demo --config configs/demo.yaml`.

Cranfield through offline ir_datasets and a packaged LM (Gemma 3 270M in configs/demo.yaml):
prepare (first-stage candidates: in configs/demo.yaml hybrid BM25 + dense, as Cranfield dev
chose; splits, training groups), a short training of each method in `demo.methods`,
reranking of the test queries' candidates with the first stage itself (its run named by its
kind), zero-shot and every trained adapter, and an evaluation with paired t-tests. Every
step is the real one (`qpeft prepare`, `train`, `rerank`, `evaluate`) called in one process;
re-running resumes where it stopped.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipelines.cli import run_as_module, step_config
from pipelines.demo_summary import summary_lines
from pipelines.evaluate import EvaluateConfig, EvaluateSection, evaluate
from pipelines.prepare import PrepareConfig, PrepareSection, prepare, print_counts
from pipelines.ray_setup import RaySection, init_ray
from pipelines.rerank import FIRST_STAGE, RerankConfig, RerankSection, RerankSystem, rerank
from pipelines.rerank_fusion import CHOOSE
from pipelines.step import claimed, sections_for
from pipelines.train import DataSection, RunSection, ScalingSection, TrainRunConfig, train
from qpeft import storage
from qpeft.artifacts import (
    OutputFolder,
    PreparedData,
    Report,
    RerankRun,
    TrainingRun,
    without,
)
from qpeft.config import (
    AdapterConfig,
    ConfigError,
    LossConfig,
    ModelConfig,
    ScoringConfig,
    TemplateConfig,
    to_dict,
)
from qpeft.data.first_stage import FirstStageConfig
from qpeft.data.sources import SourceConfig
from qpeft.methods import trainable_methods
from qpeft.training.loop import TrainSettings


@dataclass
class DemoSection:
    output_dir: str = "runs/demo"
    methods: list[str] = field(default_factory=lambda: ["qpeft_a"])
    rerank_queries: int | None = 20  # test queries to rerank (null: all of them)
    depth: int = 20  # first-stage candidates reranked per query
    # The run every other is tested against: zero_shot, a method, or the first stage's run,
    # named by its kind (hybrid, bm25, dense).
    baseline: str = "zero_shot"
    measures: list[str] = field(
        default_factory=lambda: ["ndcg@10", "ndcg@20", "mrr@10", "map", "recall@10", "p@5"]
    )
    overwrite: bool = False

    def validate(self) -> None:
        allowed = trainable_methods()
        unknown = [m for m in self.methods if m not in allowed]
        if unknown:
            raise ConfigError(f"demo.methods: {unknown[0]!r} is not one of {list(allowed)}")


@dataclass
class DemoConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    template: TemplateConfig = field(default_factory=lambda: TemplateConfig(max_doc_tokens=96))
    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # method: see demo.methods
    loss: LossConfig = field(default_factory=LossConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    source: SourceConfig = field(default_factory=lambda: SourceConfig(irds="cranfield"))
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    demo: DemoSection = field(default_factory=DemoSection)
    ray: RaySection = field(default_factory=RaySection)

    def validate(self) -> None:
        runs = (self.first_stage.kind, "zero_shot", *self.demo.methods)
        if self.demo.baseline not in runs:
            raise ConfigError(
                f"demo.baseline: {self.demo.baseline!r} is not a run of the demo ({list(runs)})"
            )


class DemoFolder(OutputFolder):
    """The demo's folder: each step's own artifact in a sub-folder, the report last."""

    step = "demo"
    marker = "evaluate/report.json"
    overwrite_key = "demo.overwrite"

    @property
    def prepared(self) -> PreparedData:
        return PreparedData(self.path("prepare"))

    @property
    def train_dir(self) -> str:
        return self.path("train")

    @property
    def rerank_dir(self) -> str:
        return self.path("rerank")

    def training_run(self, method: str) -> TrainingRun:
        return TrainingRun(storage.join(self.train_dir, method))

    def rerank_run(self, name: str) -> RerankRun:
        return RerankRun(storage.join(self.rerank_dir, name))

    @property
    def report(self) -> Report:
        return Report(self.path("evaluate"))


def demo_settings(cfg: DemoConfig) -> dict:
    """What the demo's outputs depend on (not Ray's resources, not `overwrite`)."""
    return without(to_dict(cfg), ("ray", "demo.overwrite"))


class Progress:
    def __init__(self, total: int):
        self.start, self.total, self.done = time.perf_counter(), total, 0

    def stage(self, title: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        print(f"\n[demo {elapsed:5.0f}s] step {self.done}/{self.total}: {title}", flush=True)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def run_demo(cfg: DemoConfig) -> dict:
    if storage.is_uri(cfg.demo.output_dir):
        raise ConfigError(
            "demo.output_dir: the demo writes a local folder; run the steps themselves "
            "(prepare, train, rerank, evaluate) to keep outputs in cloud storage"
        )
    folder = DemoFolder(Path(cfg.demo.output_dir))
    with claimed(folder, demo_settings(cfg), cfg.demo.overwrite) as out:
        return run_demo_steps(cfg, out)


def run_demo_steps(cfg: DemoConfig, out: DemoFolder) -> dict:
    progress = Progress(3 + len(cfg.demo.methods))
    init_ray(cfg.ray)

    kind = cfg.first_stage.kind  # also the name of the first stage's own run
    progress.stage(f"prepare {cfg.source.irds or 'the source'} ({kind} candidates, splits, groups)")
    prepared = out.prepared
    counts = prepare(
        sections_for(
            PrepareConfig,
            cfg,
            prepare=PrepareSection(
                output_dir=prepared.root, source=cfg.source, first_stage=cfg.first_stage
            ),
        )
    )
    print_counts(counts, str(Path(prepared.root).resolve()))

    adapters, trainings = {}, {}
    for method in cfg.demo.methods:
        progress.stage(f"train {method}")
        summary = train(
            sections_for(
                TrainRunConfig,
                cfg,
                adapter=replace(cfg.adapter, method=method),
                data=DataSection(prepared_dir=prepared.root),
                run=RunSection(name=method, storage_path=out.train_dir),
            )
        )
        adapters[method] = out.training_run(method).best_adapter()
        trainings[method] = summary
        print(
            f"[demo] {method}: {summary['steps']} steps, best dev NDCG@10 "
            f"{summary['best_dev_ndcg10']:.4f}; adapter in {adapters[method]}",
            flush=True,
        )

    def rerank_with(name: str, method: str, adapter_dir: str | None, **section) -> RerankRun:
        rerank(
            sections_for(
                RerankConfig,
                cfg,
                rerank=RerankSection(
                    prepared_dir=prepared.root,
                    method=method,
                    adapter_dir=adapter_dir,
                    name=name,
                    output_dir=out.rerank_dir,
                    **{"depth": cfg.demo.depth, **section},
                ),
            )
        )
        return out.rerank_run(name)

    # Zero-shot's fusion weight, chosen on the dev queries training evaluates on (the
    # adapters carry the weight training chose on the same queries).
    zero_shot_dev = rerank_with(
        "zero_shot_dev",
        "zero_shot",
        None,
        split="dev",
        max_queries=cfg.train.dev_max_queries,
        fusion=CHOOSE,
        depth=cfg.train.dev_depth,  # where training chose the adapters' weights
    )
    systems = [
        (kind, FIRST_STAGE, None, None),
        ("zero_shot", "zero_shot", None, zero_shot_dev.path(RerankRun.FUSION)),
    ]
    systems += [(m, m, adapters[m], None) for m in cfg.demo.methods]
    progress.stage(
        f"rerank the {kind} top-{cfg.demo.depth} of "
        f"{cfg.demo.rerank_queries or 'all'} test queries with {len(systems)} systems"
    )
    # One job: every system scores the same candidates in the same passes (each
    # document's prefix computed once for all of them), each into its own run folder; a
    # LoRA adapter, which changes the LM, in a job of its own.
    shared = [system for system in systems if system[1] != "lora"]
    for job in [shared, *([system] for system in systems if system[1] == "lora")]:
        (first_name, first_method, first_adapter, first_fusion), *others = job
        rerank_with(
            first_name,
            first_method,
            first_adapter,
            split="test",
            max_queries=cfg.demo.rerank_queries,
            fusion=first_fusion,
            also=[
                RerankSystem(method=method, adapter_dir=adapter_dir, name=name, fusion=fusion)
                for name, method, adapter_dir, fusion in others
            ],
        )
    runs = {}
    for name, *_ in systems:
        run = out.rerank_run(name)
        runs[name] = run.root
        if "fusion" in run.counts():
            runs[f"{name}_fused"] = run.path(RerankRun.FUSED_TREC)

    progress.stage("evaluate")
    report, table = evaluate(
        EvaluateConfig(
            EvaluateSection(
                runs=runs,
                baseline=cfg.demo.baseline,
                also_against=[kind] if cfg.demo.baseline != kind else [],
                prepared_dir=prepared.root,
                split="test",
                measures=list(cfg.demo.measures),
                output_dir=out.report.root,
            )
        )
    )
    print(f"\n{table}\n")
    print("\n".join(summary_lines(report, trainings, first_stage=kind)) + "\n")
    print(
        f"[demo] done in {progress.seconds:.0f}s. Files under {Path(out.root).resolve()}:\n"
        f"  prepare/   parquet shards and counts.json\n"
        f"  train/     checkpoints; adapters in train/<method>/adapter\n"
        f"  rerank/    one run per system (run/ parquet, run.trec, run_fused.trec, counts.json)\n"
        f"  evaluate/  report.md, report.json, per_query.tsv, report.png"
    )
    return report


def main(argv: list[str] | None = None) -> None:
    run_demo(step_config(DemoConfig, __doc__.splitlines()[0], argv))


if __name__ == "__main__":
    sys.exit(run_as_module("pipelines.demo"))
