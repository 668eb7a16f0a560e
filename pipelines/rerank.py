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
import os
import shutil
import sys
import time
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
from qpeft.checkpoint import (
    WEIGHTS_NAME,
    adapter_location,
    adapter_reference,
    load_reranker,
    read_adapter_config,
    reranker_configs,
)
from qpeft.config import (
    ConfigError,
    ModelConfig,
    ScoringConfig,
    TemplateConfig,
    check_choice,
    from_dict,
    to_dict,
)
from qpeft.data.readers import DataError
from qpeft.data.runs import write_trec_run
from qpeft.input_check import QueryCheck, check_queries
from qpeft.methods import METHODS, trainable_methods
from qpeft.model import describe_prefix_budget
from qpeft.template import Template

FIRST_STAGE = "first_stage"  # the pass-through system: the first stage's own ranking


@dataclass
class RerankSection:
    prepared_dir: str = "runs/prepare/cranfield"
    split: str | None = "test"  # null: every query
    depth: int = 100  # rerank each query's top `depth` first-stage candidates
    max_queries: int | None = None  # the first N query ids only (a quick look)
    method: str = "zero_shot"  # first_stage, or a name in qpeft.methods.METHODS
    adapter_dir: str | None = None  # required for trained methods
    name: str | None = None  # run tag and output folder; default: the method
    output_dir: str = "runs/rerank"
    docs_per_shard: int = 64  # the unit of resumption: every pair of these documents
    rows_per_batch: int = 128  # pairs per actor call (documents in id order); batched within
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

    def validate(self) -> None:
        for key in ("depth", "docs_per_shard", "rows_per_batch", "num_actors"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"rerank.{key}: must be positive")
        check_choice(self.method, [FIRST_STAGE, *METHODS], "rerank.method")
        trained = self.method in trainable_methods()
        if trained and not self.adapter_dir:
            raise ConfigError(f"rerank.adapter_dir: method {self.method} needs its adapter")
        if not trained and self.adapter_dir:
            raise ConfigError(f"rerank.adapter_dir: method {self.method} takes no adapter")
        if self.fusion is not None and self.method == FIRST_STAGE:
            raise ConfigError("rerank.fusion: the first stage has nothing to fuse with")
        check_fusion_value(self.fusion, "rerank.fusion")
        if self.fusion == CHOOSE and self.split in (None, "test"):
            raise ConfigError(
                "rerank.fusion: choose picks the weight on this split's qrels; choose it on "
                "dev and pass that run's fusion.json here"
            )

    @property
    def run_name(self) -> str:
        return self.name or self.method


@dataclass
class RerankConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)  # zero-shot only
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    rerank: RerankSection = field(default_factory=RerankSection)
    ray: RaySection = field(default_factory=RaySection)


SCORE_COLUMNS = ["query_id", "query", "doc_id", "rank", "first_stage_score", "text"]


def scored_table(batch: pa.Table, scores: list[float]) -> pa.Table:
    return pa.table(
        {
            "query_id": batch.column("query_id"),
            "doc_id": batch.column("doc_id"),
            "score": pa.array(scores, pa.float64()),
            "first_stage_rank": batch.column("rank"),
            "first_stage_score": batch.column("first_stage_score"),
        }
    )


def first_stage_scores(batch: pa.Table) -> pa.Table:
    """The pass-through system: the first stage's own scores."""
    return scored_table(batch, pc.cast(batch.column("first_stage_score"), pa.float64()).to_pylist())


class PairScorer:
    """Ray Data UDF: one model per actor; scores a batch with the shared scorer."""

    def __init__(self, config: dict, threads: int | None):
        import torch

        cfg = from_dict(RerankConfig, config)
        num_actors = cfg.rerank.num_actors
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // num_actors))
        from qpeft.backbone import load_backbone

        model_cfg = replace(cfg.model, device="cuda") if cfg.rerank.use_gpu else cfg.model
        self.model = load_reranker(load_backbone(model_cfg), cfg.template, cfg.rerank.adapter_dir)
        self.scoring = cfg.scoring
        self.scoring.check_budget(self.model.template.config)  # the adapter's own template
        print(describe_prefix_budget(self.model.backbone, cfg.scoring.prefix_token_budget))

    def __call__(self, batch: pa.Table) -> pa.Table:
        from qpeft.scoring import score_with

        # The driver checked every query against the template (check_rerank_queries).
        scores = score_with(
            self.model,
            batch.column("query").to_pylist(),
            batch.column("text").to_pylist(),
            self.scoring,
        )
        return scored_table(batch, scores)


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


def check_adapter(section: RerankSection) -> None:
    if not section.adapter_dir:
        return
    try:
        saved = read_adapter_config(section.adapter_dir)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"rerank.adapter_dir: {err}") from None
    if saved["method"] != section.method:
        raise ConfigError(
            f"rerank.adapter_dir: {section.adapter_dir} holds a {saved['method']} adapter, "
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
    from qpeft.backbone import load_tokenizer

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


def scored_batches(cfg: RerankConfig, prepared: PreparedData, queries: list[str], docs: list[str]):
    """Stream scored tables of the candidates of `queries` x `docs` through Ray Data,
    sorted by document so that each document's pairs reach one actor call together."""
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
    if section.method == FIRST_STAGE:
        scored = data.map_batches(first_stage_scores, batch_format="pyarrow")
    else:
        scored = data.map_batches(
            PairScorer,
            fn_constructor_kwargs={"config": to_dict(cfg), "threads": section.threads_per_actor},
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


def rerank(cfg: RerankConfig) -> dict:
    """Score every missing shard, verify, and publish the run; returns the counts."""
    section = cfg.rerank
    start = time.perf_counter()
    prepared = PreparedData(storage.absolute(section.prepared_dir))
    prepared.require_complete("rerank.prepared_dir")
    check_adapter(section)
    # Resolve the fusion weight now: a bad fusion.json fails here, not after the scoring.
    section = replace(section, fusion=fusion_weight(section.fusion, section.adapter_dir))
    cfg = replace(cfg, rerank=section)
    dest = RerankRun(storage.join(section.output_dir, section.run_name))
    with claimed(dest, stamp_settings(cfg), section.overwrite, staged=True) as run:
        if section.adapter_dir:  # the actors may run in another directory
            section = replace(section, adapter_dir=adapter_reference(section.adapter_dir))
        cfg = replace(cfg, rerank=section)
        return score_missing_shards(cfg, prepared, run, dest.root, start)


def score_missing_shards(
    cfg: RerankConfig, prepared: PreparedData, run: RerankRun, dest: str, start: float
) -> dict:
    """The body of `rerank` once its output folder `run` (a local copy of `dest`) is claimed."""
    section = cfg.rerank
    out = Path(run.root)
    if run.is_complete():
        counts = run.counts()
        wanted, done = section.fusion, counts.get("fusion", {})
        if (
            wanted is None
            or (wanted == CHOOSE and "chosen_on" in done)
            or (wanted != CHOOSE and done.get("weight") == wanted)
        ):
            log(f"{dest} is complete; nothing to do", start)
            return counts
        # Complete, but asked for another fusion: only the fused run is rewritten.
        counts["fusion"] = write_fused_run(out, prepared, section.run_name, section.split, wanted)
        run.write_counts(counts)
        log(f"{dest} is complete; fused again at weight {counts['fusion']['weight']}", start)
        return counts
    shards_dir = out / RerankRun.PARTIAL
    shards_dir.mkdir(exist_ok=True)
    plan = plan_shards(prepared, section)
    query_check = QueryCheck()
    if section.method != FIRST_STAGE:
        from qpeft.backbone import pin_model

        # The actors only read the model cache; the driver fills it once.
        cfg = replace(cfg, model=pin_model(cfg.model))
        query_check = check_rerank_queries(cfg, prepared, plan.queries)
        if query_check.skipped:
            plan = plan_shards(prepared, section, query_check.skipped)
        log(
            f"queries: {query_check.over_limit} over the template's max_query_tokens; "
            f"{query_check.truncated} truncated, {len(query_check.skipped)} skipped",
            start,
        )
    if not plan.expected:
        raise DataError(
            f"{prepared.path(prepared.CANDIDATES)}: no candidates for split {section.split!r}"
        )
    done = finished_shards(shards_dir, plan)
    todo = [i for i in range(len(plan.expected)) if i not in set(done)]
    if section.max_new_shards is not None:
        todo = todo[: section.max_new_shards]
    todo_pairs = sum(len(plan.expected[i]) for i in todo)
    log(
        f"{section.run_name}: {len(plan.queries)} queries, {plan.pairs} pairs of "
        f"{len(plan.shard_of_doc)} documents in {len(plan.expected)} shards; {len(done)} "
        f"already done, scoring {len(todo)} ({todo_pairs} pairs)",
        start,
    )
    scored_now = 0
    if todo:
        init_ray(cfg.ray)
        if section.method != FIRST_STAGE:
            check_cpu_headroom(
                section.num_actors * section.cpus_per_actor,
                f"rerank: {section.num_actors} actors x {section.cpus_per_actor} CPUs",
                "lower rerank.cpus_per_actor or rerank.num_actors",
            )
        collector = ShardCollector(plan)
        tick = time.perf_counter()
        for batch in scored_batches(cfg, prepared, plan.queries, plan.docs_of(todo)):
            for shard, rows in collector.add(batch.to_pylist()):
                write_shard(shards_dir, shard, rows)
                scored_now += len(rows)
                rate = scored_now / (time.perf_counter() - tick)
                log(
                    f"shard {shard} written: {scored_now}/{todo_pairs} pairs this run, "
                    f"{rate:.2f} pairs/s, ETA {(todo_pairs - scored_now) / rate:.0f}s",
                    start,
                )
        if collector.buffers:
            raise DataError(
                f"{dest}: {collector.pending_pairs} scored pairs belong to shards that never "
                "completed; the run is left incomplete"
            )
    seconds = time.perf_counter() - start
    history = record_invocation(
        out, {"scored_pairs": scored_now, "shards": len(todo), "seconds": round(seconds, 1)}
    )
    remaining = len(plan.expected) - len(finished_shards(shards_dir, plan))
    if remaining:
        log(f"stopped with {remaining} shards left (rerank.max_new_shards); run again", start)
        return {"complete": False, "shards_left": remaining, "scored_this_run": scored_now}
    counts = verify(shards_dir, plan)
    rows = assemble_run(shards_dir, out / RerankRun.RUN)
    write_trec_run(out / RerankRun.TREC, rows, section.run_name)
    if section.fusion is not None:
        counts["fusion"] = write_fused_run(
            out, prepared, section.run_name, section.split, section.fusion
        )
        log(f"fused with the first stage at weight {counts['fusion']['weight']}", start)
    counts.update(
        complete=True,
        queries=len(plan.queries),
        documents=len(plan.shard_of_doc),
        shards=len(plan.expected),
        scored_this_run=scored_now,
        reused_from_earlier_runs=counts["pairs_written"] - scored_now,
        invocations=history,
        method=section.method,
        adapter_dir=section.adapter_dir,
        query_check=query_check.counts(),
    )
    run.write_counts(counts)
    run.mark_complete()
    shutil.rmtree(shards_dir)  # published: the document shards are in `run/`
    log(
        f"{counts['pairs_written']} pairs scored exactly once ({scored_now} this run); "
        f"run in {storage.join(dest, RerankRun.RUN)} and {storage.join(dest, RerankRun.TREC)}",
        start,
    )
    return counts


def main(argv: list[str] | None = None) -> None:
    rerank(step_config(RerankConfig, __doc__.splitlines()[0], argv))


if __name__ == "__main__":
    sys.exit(run_as_module("pipelines.rerank"))
