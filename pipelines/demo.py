"""The whole pipeline on the embedded default: `qpeft demo --config configs/demo.yaml`.

NFCorpus's official splits through offline ir_datasets and a packaged LM (Gemma 3 270M in
configs/demo.yaml): prepare (first-stage candidates: hybrid BM25 + dense, as NFCorpus dev
chose; training groups), a training of each method in `demo.methods` on a sample of the
training queries (its dev check, whose step 0 is zero-shot exactly, gives the fusion weights
and each adapter's dev test against zero-shot), a rerank of test queries by zero-shot and
every adapter beside the first stage itself (its run named by its kind) and BM25 alone, and
an evaluation with paired t-tests. Every step is the real one (`qpeft prepare`, `train`,
`rerank`, `evaluate`) called in one process; re-running resumes where it stopped.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.cli import run_as_module, step_config
from pipelines.demo_summary import summary_lines
from pipelines.evaluate import EvaluateConfig, EvaluateSection, evaluate
from pipelines.prepare import PrepareConfig, PrepareSection, prepare, print_counts
from pipelines.ray_setup import RaySection, init_ray
from pipelines.rerank import FIRST_STAGE, RerankConfig, RerankSection, RerankSystem, rerank
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
from qpeft.data.first_stage import FirstStageConfig, bm25_lists
from qpeft.data.runs import read_run, write_trec_run
from qpeft.data.sources import SourceConfig
from qpeft.lm.backbone import pin_model
from qpeft.methods import trainable_methods
from qpeft.metrics import mean, paired_t_test
from qpeft.training.loop import TrainSettings


@dataclass
class DemoSection:
    output_dir: str = "runs/demo"
    methods: list[str] = field(default_factory=lambda: ["qpeft_a"])
    # Test queries each system reranks: a seeded sample of N, the only test queries prepare
    # keeps (prepare.max_queries; null: all of them). On dev the demo reads the training's
    # dev check (train.dev_max_queries, train.dev_depth).
    rerank_queries: int | None = 40
    depth: int = 20  # first-stage candidates reranked per query
    # The run every other is tested against: zero_shot, a method, or the first stage's run,
    # named by its kind (hybrid, bm25, dense); a hybrid or dense first stage also shows bm25.
    baseline: str = "zero_shot"
    measures: list[str] = field(
        default_factory=lambda: ["ndcg@10", "ndcg@20", "mrr@10", "map", "recall@10", "p@5"]
    )
    overwrite: bool = False

    def validate(self) -> None:
        allowed = trainable_methods()
        if not self.methods:
            raise ConfigError(f"demo.methods: name at least one method to train, of {allowed}")
        unknown = [m for m in self.methods if m not in allowed]
        if unknown:
            raise ConfigError(f"demo.methods: {unknown[0]!r} is not one of {list(allowed)}")


@dataclass
class DemoConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    template: TemplateConfig = field(
        default_factory=lambda: TemplateConfig(max_doc_tokens=96, question="Query: \n")
    )
    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # method: see demo.methods
    loss: LossConfig = field(default_factory=LossConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    source: SourceConfig = field(
        default_factory=lambda: SourceConfig(
            irds_splits={s: f"beir/nfcorpus/{s}" for s in ("train", "dev", "test")}
        )
    )
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    demo: DemoSection = field(default_factory=DemoSection)
    ray: RaySection = field(default_factory=RaySection)

    def validate(self) -> None:
        if not self.adapter.hint_gate and {"qpeft_a", "qpeft_r"} & set(self.demo.methods):
            raise ConfigError(
                "adapter.hint_gate: the demo reads zero-shot's dev figures from each "
                "adapter's untrained start, which ranks as zero-shot only with gated hints "
                "(true)"
            )
        runs = (self.first_stage.kind, "bm25", "zero_shot", *self.demo.methods)
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
    methods = cfg.demo.methods
    progress = Progress(3 + len(methods))
    init_ray(cfg.ray)

    kind = cfg.first_stage.kind  # also the name of the first stage's own run
    progress.stage(f"prepare {source_name(cfg.source)} ({kind} candidates, splits, groups)")
    prepared = out.prepared
    # The LM's one-time conversion from its GGUF (about 35 s on 2 cores) runs
    # beside prepare, whose Ray tasks leave a core idle much of the time.
    with ThreadPoolExecutor(1) as pool:
        converting = pool.submit(pin_model, cfg.model)
        counts = prepare(
            sections_for(
                PrepareConfig,
                cfg,
                prepare=PrepareSection(
                    output_dir=prepared.root,
                    source=cfg.source,
                    first_stage=cfg.first_stage,
                    max_queries=queries_used(cfg),
                ),
            )
        )
        converting.result()
    print_counts(counts, str(Path(prepared.root).resolve()))

    adapters, trainings = {}, {}
    for method in methods:
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

    # Dev: every adapter starts as zero-shot exactly (gated hints, LoRA's zero B, the soft
    # prompt's text), so the training's step-0 dev check is zero-shot's dev rerank: its
    # per-query NDCG@10 and its fusion weight, chosen on those queries as each adapter's was.
    zero_shot_dev = trainings[methods[0]]["history"][0]
    dev_moves = {m: dev_move(trainings[m], zero_shot_dev["dev_ndcg10_by_query"]) for m in methods}

    systems = [
        (kind, FIRST_STAGE, None, None),
        ("zero_shot", "zero_shot", None, zero_shot_dev["fusion_weight"]),
        *((m, m, adapters[m], None) for m in methods),  # the weight training chose
    ]
    progress.stage(
        f"rerank the {kind} top-{cfg.demo.depth} of {cfg.demo.rerank_queries or 'all'} test "
        f"queries with {len(systems)} systems"
    )
    # One job: every system scores the same candidates in the same passes (each
    # document's prefix computed once for all of them), each into its own run folder; a
    # LoRA adapter, which changes the LM, in a job of its own.
    shared = [system for system in systems if system[1] != "lora"]
    for job in [shared, *([system] for system in systems if system[1] == "lora")]:
        (name, method, adapter_dir, fusion), *others = job
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
                    split="test",
                    depth=cfg.demo.depth,
                    max_queries=cfg.demo.rerank_queries,
                    fusion=fusion,
                    also=[
                        RerankSystem(method=m, adapter_dir=a, name=n, fusion=f)
                        for n, m, a, f in others
                    ],
                ),
            )
        )
    runs = {}
    if kind != "bm25":  # the lexical list alone, beside the first stage that fused it
        runs["bm25"] = write_bm25_run(cfg, out, out.rerank_run(kind))
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
                also_against=[n for n in (kind, "bm25") if n in runs and n != cfg.demo.baseline],
                prepared_dir=prepared.root,
                split="test",
                measures=list(cfg.demo.measures),
                output_dir=out.report.root,
            )
        )
    )
    print(f"\n{table}\n")
    print("\n".join(summary_lines(report, dev_moves, trainings, first_stage=kind)) + "\n")
    print(
        f"[demo] done in {progress.seconds:.0f}s. Files under {Path(out.root).resolve()}:\n"
        f"  prepare/   parquet shards and counts.json\n"
        f"  train/     checkpoints; adapters in train/<method>/adapter\n"
        f"  rerank/    one run per system (run/ parquet, run.trec, run_fused.trec, counts.json)\n"
        f"             and bm25.trec\n"
        f"  evaluate/  report.md, report.json, per_query.tsv, report.png"
    )
    return report


def queries_used(cfg: DemoConfig) -> dict[str, int]:
    """Per split, the queries the demo trains, checks and tests on: prepare makes candidates
    and groups for those alone (NFCorpus has 3,237; the demo uses 240 of them)."""
    used = {
        "train": cfg.train.max_train_queries,
        "dev": cfg.train.dev_max_queries,
        "test": cfg.demo.rerank_queries,
    }
    return {split: n for split, n in used.items() if n is not None}


def source_name(source: SourceConfig) -> str:
    if source.irds:
        return source.irds
    if source.irds_splits:
        return ", ".join(sorted(set(source.irds_splits.values())))
    return "the source"


def dev_move(training: dict, zero_shot: dict[str, float]) -> dict:
    """The kept adapter's dev check against zero-shot's (its step 0) on the same queries:
    means and a paired t-test on NDCG@10, query by query."""
    kept = [h for h in training["history"] if h["epoch"] == training["best_epoch"]][-1]
    queries = sorted(kept["dev_ndcg10_by_query"])
    values = [kept["dev_ndcg10_by_query"][q] for q in queries]
    base = [zero_shot[q] for q in queries]
    return {
        "queries": len(queries),
        "trained": mean(values),
        "zero_shot": mean(base),
        "p_value": paired_t_test(values, base),
    }


def write_bm25_run(cfg: DemoConfig, out: DemoFolder, first_stage_run: RerankRun) -> str:
    """BM25's own top `demo.depth` (as deep as the reranked lists) for the test queries the
    first stage ranked, as a TREC run beside the reranks; written once, atomically."""
    path = Path(out.rerank_dir) / "bm25.trec"
    if not path.exists():
        ranked = set(read_run(first_stage_run.root))
        queries = out.prepared.table(out.prepared.QUERIES, ["query_id", "text"])
        queries = queries.filter(pc.field("query_id").isin(pa.array(sorted(ranked))))
        bm25 = replace(cfg.first_stage, depth=cfg.demo.depth)
        write_trec_run(path, bm25_lists(out.prepared.root, bm25, queries), "bm25")
    return str(path)


def main(argv: list[str] | None = None) -> None:
    run_demo(step_config(DemoConfig, __doc__.splitlines()[0], argv))


if __name__ == "__main__":
    sys.exit(run_as_module("pipelines.demo"))
