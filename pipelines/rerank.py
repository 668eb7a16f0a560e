"""Rerank first-stage candidates with Ray Data: `qpeft rerank --config FILE`.

Candidates of a prepared directory stream through `map_batches`, sorted by document, on a
pool of actors, each holding one model (CPU or GPU): a batch holds every pair of a few
documents, and the scorer computes each document's prefix once for all of its queries
(document-major scoring). Finished shards of documents are written atomically as they
complete, so an interrupted run resumes without rescoring them; at the end every candidate
must have been scored exactly once, and the run is ranked per query, before `run/`,
`run.trec`, `counts.json` and `_SUCCESS` appear. `output_dir`,
`prepared_dir` and `adapter_dir` may be cloud URIs: the driver writes the run in a local
copy that is uploaded after every invocation, `_SUCCESS` last.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import ActorPoolStrategy
from ray.data.expressions import col

from pipelines.cli import run_as_module, step_config
from pipelines.ray_setup import (
    RaySection,
    check_cpu_headroom,
    init_ray,
)
from pipelines.rerank_fusion import CHOOSE, check_fusion_value, fusion_weight, write_fused_run
from pipelines.rerank_scorer import (
    FIRST_STAGE,
    SCORE_COLUMNS,
    SystemSpec,
    SystemsScorer,
    first_stage_only,
    system_scores,
)
from pipelines.rerank_shards import (
    ShardCollector,
    ShardPlan,
    assemble_run,
    finished_shards,
    verify,
    write_shard,
)
from pipelines.step import claimed
from qpeft import storage
from qpeft.artifacts import PreparedData, RerankRun
from qpeft.config import (
    ConfigError,
    ModelConfig,
    ScoringConfig,
    TemplateConfig,
    check_choice,
    to_dict,
)
from qpeft.data.readers import DataError
from qpeft.data.runs import write_trec_run
from qpeft.input_check import QueryCheck, check_queries
from qpeft.lm.template import Template
from qpeft.loading.checkpoint import (
    WEIGHTS_NAME,
    adapter_location,
    adapter_reference,
    read_adapter_config,
    reranker_configs,
)
from qpeft.methods import METHODS, trainable_methods


@dataclass
class RerankSystem:
    """One more system of a rerank job (`rerank.also`): scored over the same candidates in
    the same pass, written to its own run folder; keys as in `rerank`."""

    method: str = "zero_shot"
    adapter_dir: str | None = None
    name: str | None = None
    fusion: float | str | None = None

    @property
    def run_name(self) -> str:
        return self.name or self.method


@dataclass
class RerankSection:
    prepared_dir: str = "runs/prepare/cranfield"
    split: str | None = "test"  # null: every query
    # Rerank each query's top `depth` first-stage candidates: 20, chosen on NFCorpus dev
    # (deeper kept fused NDCG@10 within 0.0005 and lowered the raw LM's; docs/results.md).
    depth: int = 20
    max_queries: int | None = None  # the first N query ids only (a quick look)
    method: str = "zero_shot"  # first_stage, or a name in qpeft.methods.METHODS
    adapter_dir: str | None = None  # required for trained methods
    name: str | None = None  # run tag and output folder; default: the method
    output_dir: str = "runs/rerank"
    docs_per_shard: int = 64  # the unit of resumption: every pair of these documents
    rows_per_batch: int = 512  # pairs per actor call (documents in id order); batched within
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    threads_per_actor: int | None = None  # null: the node's cores / num_actors
    use_gpu: bool = False
    max_new_shards: int | None = None  # score at most this many shards in this invocation
    overwrite: bool = False
    # A second run, `<name>_fused`, interpolating the LM with the first stage
    # (pipelines/rerank_fusion.py): null: the adapter's dev-chosen weight (zero-shot: no
    # fused run); a number in [0, 1]; `choose`: pick it on this split (dev, never test) and
    # write fusion.json; or the path of such a fusion.json.
    fusion: float | str | None = None
    # More systems scored in the same job, over the same candidates and in the same
    # forward passes (each document's prefix computed once for all of them), each written
    # to its own run folder `<output_dir>/<name>`.
    also: list[RerankSystem] = field(default_factory=list)

    def validate(self) -> None:
        for key in ("depth", "docs_per_shard", "rows_per_batch", "num_actors"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"rerank.{key}: must be positive")
        check_system(self, self.split, "rerank")
        for i, system in enumerate(self.also):
            check_system(system, self.split, f"rerank.also[{i}]")
        names = [self.run_name, *(system.run_name for system in self.also)]
        for i, name in enumerate(names[1:]):
            if name in names[: i + 1]:
                raise ConfigError(
                    f"rerank.also[{i}].name: {name!r} is another system's run folder already"
                )
        if self.also and "lora" in [self.method, *(system.method for system in self.also)]:
            raise ConfigError(
                "rerank.also: a LoRA adapter puts weights into the LM, so its pairs cannot "
                "share a pass with other systems; rerank it in a job of its own"
            )

    @property
    def run_name(self) -> str:
        return self.name or self.method

    def systems(self) -> list[RerankSection]:
        """This job's systems, each as a single-system section: its own, then `also`'s."""
        return [
            replace(self, also=[]),
            *(
                replace(
                    self,
                    method=system.method,
                    adapter_dir=system.adapter_dir,
                    name=system.name,
                    fusion=system.fusion,
                    also=[],
                )
                for system in self.also
            ),
        ]


def check_system(system: RerankSection | RerankSystem, split: str | None, key: str) -> None:
    """A system's method, adapter and fusion agree with each other; `key` names it."""
    check_choice(system.method, [FIRST_STAGE, *METHODS], f"{key}.method")
    trained = system.method in trainable_methods()
    if trained and not system.adapter_dir:
        raise ConfigError(f"{key}.adapter_dir: method {system.method} needs its adapter")
    if not trained and system.adapter_dir:
        raise ConfigError(f"{key}.adapter_dir: method {system.method} takes no adapter")
    if system.fusion is not None and system.method == FIRST_STAGE:
        raise ConfigError(f"{key}.fusion: the first stage has nothing to fuse with")
    check_fusion_value(system.fusion, f"{key}.fusion")
    if system.fusion == CHOOSE and split in (None, "test"):
        raise ConfigError(
            f"{key}.fusion: choose picks the weight on this split's qrels; choose it on "
            "dev and pass that run's fusion.json here"
        )


@dataclass
class RerankConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)  # zero-shot only
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    rerank: RerankSection = field(default_factory=RerankSection)
    ray: RaySection = field(default_factory=RaySection)


def stamp_settings(cfg: RerankConfig) -> dict:
    """What the scores depend on: model, template, method, adapter weights, candidates and
    shard layout. Resources, batch sizes and budgets may change between invocations."""
    section = cfg.rerank
    what = {
        "model": {k: v for k, v in to_dict(cfg.model).items() if k != "num_threads"},
        "template": to_dict(cfg.template),
        "method": section.method,
        **{
            k: getattr(section, k)
            for k in ("prepared_dir", "split", "depth", "max_queries", "docs_per_shard")
        },
    }
    if section.adapter_dir:
        weights = storage.local_copy(adapter_location(section.adapter_dir)) / WEIGHTS_NAME
        what["adapter"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    return what


def check_adapter(section: RerankSection, key: str = "rerank") -> None:
    """The adapter folder must hold an adapter of the system's method; `key` names it."""
    if not section.adapter_dir:
        return
    try:
        saved = read_adapter_config(section.adapter_dir)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"{key}.adapter_dir: {err}") from None
    if saved["method"] != section.method:
        raise ConfigError(
            f"{key}.adapter_dir: {section.adapter_dir} holds a {saved['method']} adapter, "
            f"not {section.method}"
        )


def candidate_filter(section: RerankSection):
    condition = col("rank") <= section.depth
    if section.split:
        condition = condition & (col("split") == section.split)
    return condition


def plan_shards(prepared: PreparedData, section: RerankSection, skip: list[str] = ()) -> ShardPlan:
    """Candidate keys (ids only, never texts) cut into shards of whole documents; `skip`:
    queries the long-query policy leaves out."""
    condition = pc.field("rank") <= section.depth
    if section.split:
        condition = condition & (pc.field("split") == section.split)
    keys = prepared.table(prepared.CANDIDATES, ["query_id", "doc_id"], condition)
    if section.max_queries:
        first = sorted(set(keys.column("query_id").to_pylist()))[: section.max_queries]
        keys = keys.filter(pc.is_in(keys.column("query_id"), pa.array(first)))
    if skip:
        keys = keys.filter(pc.invert(pc.is_in(keys.column("query_id"), pa.array(list(skip)))))
    return ShardPlan.build(keys, section.docs_per_shard, prepared.path(prepared.CANDIDATES))


def check_rerank_queries(
    cfg: RerankConfig, prepared: PreparedData, query_ids: list[str]
) -> QueryCheck:
    """The plan's queries against the template (the adapter's own, for a trained method)
    and its long-query policy, in the driver, before any actor loads the model."""
    from qpeft.lm.backbone import load_tokenizer

    template_cfg, adapter_cfg = reranker_configs(cfg.template, cfg.rerank.adapter_dir)
    where = prepared.path(prepared.QUERIES)
    rows = prepared.table(
        prepared.QUERIES,
        ["query_id", "text"],
        pc.field("query_id").isin(pa.array(query_ids, pa.string())),
    ).to_pylist()
    template = Template(
        template_cfg, load_tokenizer(cfg.model), adapter_cfg.method, adapter_cfg.hint_gate
    )
    return check_queries(template, adapter_cfg, ((r["query_id"], r["text"]) for r in rows), where)


def log(message: str, start: float) -> None:
    print(f"[rerank {time.perf_counter() - start:6.1f}s] {message}", flush=True)


def scored_batches(
    cfg: RerankConfig,
    prepared: PreparedData,
    systems: list[SystemSpec],
    queries: list[str],
    docs: list[str],
):
    """Stream the candidates of `queries` x `docs` through Ray Data, sorted by document so
    that each document's pairs reach one actor call together, scored by every system."""
    section = cfg.rerank
    data = (
        ray.data.read_parquet(prepared.path(prepared.CANDIDATES))
        .filter(
            expr=candidate_filter(section)
            & col("query_id").is_in(queries)
            & col("doc_id").is_in(docs)
        )
        .select_columns(SCORE_COLUMNS)
        .sort("doc_id")
        # Blocks of one actor call each, so every actor of the pool gets work.
        .repartition(target_num_rows_per_block=section.rows_per_batch)
    )
    if all(system.method == FIRST_STAGE for system in systems):
        scored = data.map_batches(first_stage_only(systems), batch_format="pyarrow")
    else:
        scored = data.map_batches(
            SystemsScorer,
            fn_constructor_kwargs={
                "config": to_dict(cfg),
                "systems": systems,
                "threads": section.threads_per_actor,
            },
            compute=ActorPoolStrategy(size=section.num_actors),
            num_cpus=section.cpus_per_actor,
            num_gpus=1 if section.use_gpu else 0,
            batch_size=section.rows_per_batch,
            batch_format="pyarrow",
        )
    yield from scored.iter_batches(batch_format="pyarrow", batch_size=None)


def record_invocation(out: Path, entry: dict) -> list[dict]:
    """Append this invocation to `progress.json` (what each run scored, and how fast)."""
    path = out / RerankRun.PROGRESS
    history = json.loads(path.read_text()) if path.exists() else []
    history.append(entry)
    path.write_text(json.dumps(history, indent=2) + "\n")
    return history


@dataclass
class SystemJob:
    """One system of a job: its section, its claimed run folder (a local copy of `dest`)
    and, once planned, its shards."""

    section: RerankSection
    run: RerankRun
    dest: str
    plan: ShardPlan | None = None
    query_check: QueryCheck = field(default_factory=QueryCheck)
    todo: list[int] = field(default_factory=list)
    scored_now: int = 0

    @property
    def out(self) -> Path:
        return Path(self.run.root)

    @property
    def shards_dir(self) -> Path:
        return self.out / RerankRun.PARTIAL


def rerank(cfg: RerankConfig) -> dict:
    """Score every missing shard of every system of the job, verify, and publish each
    system's run; returns the counts of the first system (`rerank.method`)."""
    start = time.perf_counter()
    prepared = PreparedData(storage.absolute(cfg.rerank.prepared_dir))
    prepared.require_complete("rerank.prepared_dir")
    systems = []
    for index, section in enumerate(cfg.rerank.systems()):
        check_adapter(section, "rerank" if index == 0 else f"rerank.also[{index - 1}]")
        # Resolve the fusion weight now: a bad fusion.json fails here, not after scoring.
        systems.append(replace(section, fusion=fusion_weight(section.fusion, section.adapter_dir)))
    with ExitStack() as claims:
        jobs = []
        for section in systems:
            dest = RerankRun(storage.join(section.output_dir, section.run_name))
            stamp = stamp_settings(replace(cfg, rerank=section))
            run = claims.enter_context(claimed(dest, stamp, section.overwrite, staged=True))
            if section.adapter_dir:  # the actors may run in another directory
                section = replace(section, adapter_dir=adapter_reference(section.adapter_dir))
            jobs.append(SystemJob(section, run, dest.root))
        return score_missing_shards(cfg, prepared, jobs, start)[0]


def already_complete(job: SystemJob, prepared: PreparedData, start: float) -> dict | None:
    """A complete run's counts (fused again if another weight is asked for), else None."""
    if not job.run.is_complete():
        return None
    section = job.section
    counts = job.run.counts()
    wanted, done = section.fusion, counts.get("fusion", {})
    if (
        wanted is None
        or (wanted == CHOOSE and "chosen_on" in done)
        or (wanted != CHOOSE and done.get("weight") == wanted)
    ):
        log(f"{job.dest} is complete; nothing to do", start)
        return counts
    # Complete, but asked for another fusion: only the fused run is rewritten.
    counts["fusion"] = write_fused_run(job.out, prepared, section.run_name, section.split, wanted)
    job.run.write_counts(counts)
    log(f"{job.dest} is complete; fused again at weight {counts['fusion']['weight']}", start)
    return counts


def plan_job(cfg: RerankConfig, prepared: PreparedData, job: SystemJob, start: float) -> None:
    """The system's shards, its queries checked against its template, and which shards
    this invocation scores."""
    section = job.section
    job.shards_dir.mkdir(exist_ok=True)
    job.plan = plan_shards(prepared, section)
    if section.method != FIRST_STAGE:
        job.query_check = check_rerank_queries(
            replace(cfg, rerank=section), prepared, job.plan.queries
        )
        if job.query_check.skipped:
            job.plan = plan_shards(prepared, section, job.query_check.skipped)
        log(
            f"{section.run_name}: queries: {job.query_check.over_limit} over the template's "
            f"max_query_tokens; {job.query_check.truncated} truncated, "
            f"{len(job.query_check.skipped)} skipped",
            start,
        )
    if not job.plan.expected:
        raise DataError(
            f"{prepared.path(prepared.CANDIDATES)}: no candidates for split {section.split!r}"
        )
    done = set(finished_shards(job.shards_dir, job.plan))
    job.todo = [i for i in range(len(job.plan.expected)) if i not in done]
    if section.max_new_shards is not None:
        job.todo = job.todo[: section.max_new_shards]
    todo_pairs = sum(len(job.plan.expected[i]) for i in job.todo)
    log(
        f"{section.run_name}: {len(job.plan.queries)} queries, {job.plan.pairs} pairs of "
        f"{len(job.plan.shard_of_doc)} documents in {len(job.plan.expected)} shards; "
        f"{len(done)} already done, scoring {len(job.todo)} ({todo_pairs} pairs)",
        start,
    )


def score_missing_shards(
    cfg: RerankConfig, prepared: PreparedData, jobs: list[SystemJob], start: float
) -> list[dict]:
    """The body of `rerank` once every system's output folder is claimed: the counts of
    each system, in order."""
    results = [already_complete(job, prepared, start) for job in jobs]
    pending = [job for job, counts in zip(jobs, results, strict=True) if counts is None]
    if any(job.section.method != FIRST_STAGE for job in pending):
        from qpeft.lm.backbone import pin_model

        # The actors only read the model cache; the driver fills it once.
        cfg = replace(cfg, model=pin_model(cfg.model))
    for job in pending:
        plan_job(cfg, prepared, job, start)
    active = [job for job in pending if job.todo]
    if active:
        score_shards(cfg, prepared, active, start)
    published = iter(publish(job, prepared, start) for job in pending)
    return [counts if counts is not None else next(published) for counts in results]


def score_shards(
    cfg: RerankConfig, prepared: PreparedData, jobs: list[SystemJob], start: float
) -> None:
    """Score the shards each job has to do in one stream: the union of their documents,
    each pair scored by every system that still needs it; shards written as completed."""
    init_ray(cfg.ray)
    section = cfg.rerank
    if any(job.section.method != FIRST_STAGE for job in jobs):
        check_cpu_headroom(
            section.num_actors * section.cpus_per_actor,
            f"rerank: {section.num_actors} actors x {section.cpus_per_actor} CPUs",
            "lower rerank.cpus_per_actor or rerank.num_actors",
        )
    specs = [
        SystemSpec(job.section.method, job.section.adapter_dir, frozenset(job.query_check.skipped))
        for job in jobs
    ]
    collectors = [ShardCollector(job.plan) for job in jobs]
    todo = [set(job.todo) for job in jobs]
    queries = sorted({q for job in jobs for q in job.plan.queries})
    docs = sorted({d for job in jobs for d in job.plan.docs_of(job.todo)})
    todo_pairs = sum(len(job.plan.expected[i]) for job in jobs for i in job.todo)
    tick = time.perf_counter()
    for batch in scored_batches(cfg, prepared, specs, queries, docs):
        for index, (job, collector) in enumerate(zip(jobs, collectors, strict=True)):
            rows = [
                row
                for row in system_scores(batch, index).to_pylist()
                if job.plan.shard_of_doc.get(row["doc_id"]) in todo[index]
                and (row["query_id"], row["doc_id"])
                in job.plan.expected[job.plan.shard_of_doc[row["doc_id"]]]
            ]
            for shard, done in collector.add(rows):
                write_shard(job.shards_dir, shard, done)
                job.scored_now += len(done)
                scored_now = sum(j.scored_now for j in jobs)
                rate = scored_now / (time.perf_counter() - tick)
                log(
                    f"{job.section.run_name}: shard {shard} written: {scored_now}/{todo_pairs} "
                    f"pairs this run, {rate:.2f} pairs/s, "
                    f"ETA {(todo_pairs - scored_now) / rate:.0f}s",
                    start,
                )
    for job, collector in zip(jobs, collectors, strict=True):
        if collector.buffers:
            raise DataError(
                f"{job.dest}: {collector.pending_pairs} scored pairs belong to shards that "
                "never completed; the run is left incomplete"
            )


def publish(job: SystemJob, prepared: PreparedData, start: float) -> dict:
    """Verify the system's shards, assemble its run per query and publish it; an
    invocation that stopped early (`max_new_shards`) records its progress only."""
    section, out, shards_dir, plan = job.section, job.out, job.shards_dir, job.plan
    seconds = time.perf_counter() - start
    history = record_invocation(
        out,
        {"scored_pairs": job.scored_now, "shards": len(job.todo), "seconds": round(seconds, 1)},
    )
    remaining = len(plan.expected) - len(finished_shards(shards_dir, plan))
    if remaining:
        log(
            f"{section.run_name}: stopped with {remaining} shards left (rerank.max_new_shards); "
            "run again",
            start,
        )
        return {"complete": False, "shards_left": remaining, "scored_this_run": job.scored_now}
    counts = verify(shards_dir, plan)
    rows = assemble_run(shards_dir, out / RerankRun.RUN)
    write_trec_run(out / RerankRun.TREC, rows, section.run_name)
    if section.fusion is not None:
        counts["fusion"] = write_fused_run(
            out, prepared, section.run_name, section.split, section.fusion
        )
        log(
            f"{section.run_name}: fused with the first stage at weight "
            f"{counts['fusion']['weight']}",
            start,
        )
    counts.update(
        complete=True,
        queries=len(plan.queries),
        documents=len(plan.shard_of_doc),
        shards=len(plan.expected),
        scored_this_run=job.scored_now,
        reused_from_earlier_runs=counts["pairs_written"] - job.scored_now,
        invocations=history,
        method=section.method,
        adapter_dir=section.adapter_dir,
        query_check=job.query_check.counts(),
    )
    job.run.write_counts(counts)
    job.run.mark_complete()
    shutil.rmtree(shards_dir)  # published: the document shards are in `run/`
    log(
        f"{counts['pairs_written']} pairs scored exactly once ({job.scored_now} this run); "
        f"run in {storage.join(job.dest, RerankRun.RUN)} and "
        f"{storage.join(job.dest, RerankRun.TREC)}",
        start,
    )
    return counts


def main(argv: list[str] | None = None) -> None:
    rerank(step_config(RerankConfig, __doc__.splitlines()[0], argv))


if __name__ == "__main__":
    sys.exit(run_as_module("pipelines.rerank"))
