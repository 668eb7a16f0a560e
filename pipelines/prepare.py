"""Prepare data with Ray Data: sources -> parquet shards of corpus, queries, qrels,
first-stage candidates (with text) and training groups, plus counts.json.

The first stage is BM25 (or the source's run), dense (the corpus embedded on an actor pool,
`pipelines/prepare_dense.py`) or hybrid (both, fused with a dense weight chosen on dev).

`output_dir` is a local folder or a cloud URI (Ray Data writes the shards from any node).
Every table's folder gets its own `_SUCCESS` once complete (local tables are also written
under a temporary name and renamed) and the top-level `_SUCCESS` is written last, so an
interrupted run never leaves outputs that look finished; re-running resumes at the first
unfinished step.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy, Datasource, ReadTask
from ray.data.block import BlockMetadata
from ray.data.expressions import col

from pipelines.cli import run_as_module, step_config
from pipelines.prepare_dense import (
    HYBRID_CHOICE,
    choose_hybrid_weight,
    dense_resources,
    embed_corpus,
)
from pipelines.prepare_pseudo import SUMMARY as PSEUDO_SUMMARY
from pipelines.prepare_pseudo import make_pseudo_queries
from pipelines.ray_setup import RaySection, init_ray
from pipelines.step import claimed
from qpeft import storage
from qpeft.artifacts import PreparedData, without
from qpeft.config import AdapterConfig, ConfigError, ModelConfig, TemplateConfig, to_dict
from qpeft.data import schemas
from qpeft.data.dense_index import require_faiss
from qpeft.data.first_stage import FirstStage, FirstStageConfig
from qpeft.data.official_splits import split_assignment
from qpeft.data.pseudo_queries import PSEUDO_DEV, PSEUDO_SPLITS, PseudoQueriesConfig
from qpeft.data.readers import DataError
from qpeft.data.sources import Part, SourceConfig, parts
from qpeft.data.splits import SPLITS, nested_subset, split_of
from qpeft.input_check import check_queries
from qpeft.lm.packaged import PACKAGED_EMBEDDERS
from qpeft.lm.template import Template


@dataclass
class PrepareSection:
    output_dir: str = "runs/prepare"
    source: SourceConfig = field(default_factory=SourceConfig)
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)
    splits: dict[str, float] = field(
        default_factory=lambda: {"train": 0.6, "dev": 0.2, "test": 0.2}
    )
    split_seed: int = 13
    # At most this many queries per split, e.g. {train: 160, test: 40}: a sample of the
    # split's judged queries, fixed by split_seed and nested (a smaller cap keeps a subset
    # of a larger one); the others are left out and counted. Candidates and groups cost
    # time per query, so a run that uses a few queries of a large set prepares only those.
    max_queries: dict[str, int] = field(default_factory=dict)
    # Queries drafted from the corpus itself for training and the dev check, where judged
    # ones are few or none (qpeft/data/pseudo_queries.py, docs/data.md); null: none.
    pseudo_queries: PseudoQueriesConfig | None = None
    missing_docs: Literal["fail", "warn"] = "fail"
    block_rows: int = 2000  # rows per block read and per file written (embedding resumes by file)
    overwrite: bool = False

    def validate(self) -> None:
        if self.source.corpus and not self.source.queries and self.pseudo_queries is None:
            raise ConfigError(
                "source.queries: required with source.corpus, unless prepare.pseudo_queries "
                "makes the queries from the corpus"
            )
        unknown = set(self.splits) - set(SPLITS)
        if unknown:
            raise ConfigError(f"prepare.splits: unknown split {sorted(unknown)[0]!r}")
        if abs(sum(self.splits.values()) - 1.0) > 1e-6:
            raise ConfigError(f"prepare.splits: fractions must sum to 1, got {self.splits}")
        pseudo = self.pseudo_queries
        if pseudo is not None and pseudo.keep_top_k > self.first_stage.depth:
            raise ConfigError(
                f"prepare.pseudo_queries.keep_top_k: {pseudo.keep_top_k} is deeper than the "
                f"first stage's list (prepare.first_stage.depth: {self.first_stage.depth})"
            )
        for split, cap in self.max_queries.items():
            if split not in SPLITS:
                raise ConfigError(f"prepare.max_queries: unknown split {split!r} (of {SPLITS})")
            if cap is None or cap <= 0:
                raise ConfigError(
                    f"prepare.max_queries.{split}: must be a positive number of queries, "
                    f"got {cap!r} (leave the split out to keep all of its queries)"
                )


@dataclass
class PrepareConfig:
    prepare: PrepareSection = field(default_factory=PrepareSection)
    # With a model, counts.json also says how many queries are over template.max_query_tokens
    # for that model's tokenizer (what train, rerank and serve will cut, skip or refuse).
    model: ModelConfig | None = None
    template: TemplateConfig = field(default_factory=TemplateConfig)
    ray: RaySection = field(default_factory=RaySection)

    def validate(self) -> None:
        pseudo = self.prepare.pseudo_queries
        if pseudo is not None and pseudo.generates and self.model is None:
            raise ConfigError(
                f"model: prepare.pseudo_queries.kind {pseudo.kind} writes queries with an LM; "
                "name it in model.name (e.g. gemma3-270m)"
            )


def query_lengths(cfg: PrepareConfig, root: str) -> dict:
    """Queries over the template's limit, by split, for the configured tokenizer."""
    from qpeft.lm.backbone import load_tokenizer

    prepared = PreparedData(root)
    where = prepared.path(prepared.QUERIES)
    rows = prepared.table(prepared.QUERIES, ["query_id", "text", "split"]).to_pylist()
    zero_shot = AdapterConfig(method="zero_shot")
    template = Template(
        replace(cfg.template, long_queries="truncate"),
        load_tokenizer(cfg.model),
        zero_shot.method,
        zero_shot.hint_gate,
    )
    by_split = {}
    for split in sorted({r["split"] for r in rows}):
        pairs = ((r["query_id"], r["text"]) for r in rows if r["split"] == split)
        by_split[split] = check_queries(template, zero_shot, pairs, where).counts()
    return {
        "model": cfg.model.name,
        "max_query_tokens": cfg.template.max_query_tokens,
        "long_queries": cfg.template.long_queries,
        "queries_over_limit": sum(c["queries_over_limit"] for c in by_split.values()),
        "longest_query_tokens": max(
            (c["longest_query_tokens"] for c in by_split.values()), default=0
        ),
        "by_split": by_split,
    }


class PrepareError(DataError):
    """The inputs are inconsistent (e.g. judgments name documents the corpus lacks)."""


class PartsDatasource(Datasource):
    """One read task per part (file or dataset); each streams blocks of `block_rows`."""

    def __init__(self, source_parts: list[Part], schema: pa.Schema, block_rows: int):
        self.source_parts = source_parts
        self.schema = schema
        self.block_rows = block_rows

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        return [
            ReadTask(self._reader(part), BlockMetadata(None, None, None), schema=self.schema)
            for part in self.source_parts
        ]

    def _reader(self, part: Part) -> Callable:
        schema, block_rows = self.schema, self.block_rows

        def read():
            rows = []
            for row in part():
                rows.append(row)
                if len(rows) == block_rows:
                    yield schemas.table(rows, schema)
                    rows = []
            if rows:
                yield schemas.table(rows, schema)

        return read


def read_source(source: SourceConfig, kind: str, schema: pa.Schema, block_rows: int):
    """A Ray Dataset streaming `kind` records of `source`, one read task per file, in blocks
    of `block_rows`. Asked for no block count, Ray Data splits each block to reach 200:
    Cranfield's 1,400 documents became 200 files of 7, and every later step paid a task
    per file (20 s against 1 s to write the corpus alone)."""
    source_parts = parts(source, kind)
    return ray.data.read_datasource(
        PartsDatasource(source_parts, schema, block_rows),
        override_num_blocks=max(1, len(source_parts)),
    )


def assign_splits(
    batch: pa.Table, seed: int, fractions: dict[str, float], own: dict[str, str] | None
) -> pa.Table:
    """Add `split` and `skipped` to a raw query batch: the source's own split (`own`) or a
    random one by fractions; 'empty_query' for blank text, 'no_split' for a query that the
    source's splits do not name."""
    ids = batch.column("query_id").to_pylist()
    texts = [" ".join(t.split()) for t in batch.column("text").to_pylist()]
    splits = [own.get(q, "") if own is not None else split_of(q, seed, fractions) for q in ids]
    columns = {
        "query_id": ids,
        "text": texts,
        "split": splits,
        "answers": batch.column("answers").to_pylist(),
        "skipped": [
            "empty_query" if not t else "no_split" if not s else ""
            for t, s in zip(texts, splits, strict=True)
        ],
    }
    return pa.Table.from_pydict(columns, schema=schemas.with_skipped(schemas.QUERIES))


def queries_over_caps(
    rows: list[dict], caps: dict[str, int], judged: set[str], seed: int
) -> set[str]:
    """Ids that `prepare.max_queries` leaves out: in a capped split, every query but a
    nested sample of `caps[split]` judged ones (`rows`: query_id, split, skipped)."""
    left_out = set()
    for split, cap in caps.items():
        ids = [r["query_id"] for r in rows if r["split"] == split and not r["skipped"]]
        kept = set(nested_subset([q for q in ids if q in judged], cap, seed))
        left_out.update(q for q in ids if q not in kept)
    return left_out


def mark_left_out(batch: pa.Table, left_out: set[str]) -> pa.Table:
    """Ray Data UDF: 'beyond_max_queries' as the skip reason of the ids in `left_out`."""
    ids = batch.column("query_id").to_pylist()
    reasons = [
        "beyond_max_queries" if not reason and q in left_out else reason
        for q, reason in zip(ids, batch.column("skipped").to_pylist(), strict=True)
    ]
    index = batch.schema.get_field_index("skipped")
    return batch.set_column(index, "skipped", pa.array(reasons, pa.string()))


class Candidates:
    """Ray Data UDF: queries -> candidate rows (one FirstStage per actor)."""

    def __init__(self, root: str, config: FirstStageConfig, has_run: bool):
        self.stage = FirstStage(root, config, has_run)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage.candidates(batch)


class Groups(Candidates):
    """Ray Data UDF: train/dev queries -> one group row per query (or its skip reason)."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage.groups(batch)


@ray.remote(num_cpus=1)
def check_references(root: str) -> dict:
    """Count qrels and run rows that name documents or queries the prepared data lacks."""

    prepared = PreparedData(root)

    def ids(table: str, column: str) -> set[str]:
        return set(prepared.table(table, [column])[column].to_pylist())

    doc_ids, query_ids = ids(prepared.CORPUS, "doc_id"), ids(prepared.QUERIES, "query_id")
    report = {}
    for name in (prepared.QRELS, prepared.RUN):
        if not prepared.has(name):
            continue
        table = prepared.table(name, ["query_id", "doc_id"])
        docs, queries = table.column("doc_id").to_pylist(), table.column("query_id").to_pylist()
        missing_docs = [d for d in docs if d not in doc_ids]
        report[name] = {
            "rows": len(docs),
            "missing_documents": len(missing_docs),
            "missing_document_examples": sorted(set(missing_docs))[:5],
            "unknown_query_rows": sum(q not in query_ids for q in queries),
        }
    return report


def judged_queries_by_split(queries: pa.Table, qrels: pa.Table) -> dict[str, int]:
    """Queries with at least one qrel, per split (`queries`: query_id, split)."""
    query_ids, splits = (queries.column(c).to_pylist() for c in ("query_id", "split"))
    split_by_query = dict(zip(query_ids, splits, strict=True))
    judged = {s: 0 for s in split_by_query.values()}
    for query_id in set(qrels.column("query_id").to_pylist()):
        if query_id in split_by_query:
            judged[split_by_query[query_id]] += 1
    return judged


@ray.remote(num_cpus=1)
def summarize(root: str) -> dict:
    """Counts of everything written, read from the shards' columns (never the texts' bulk)."""
    prepared = PreparedData(root)
    corpus = prepared.table(prepared.CORPUS, ["doc_id", "text"])
    ids = corpus.column("doc_id")
    lengths = pa.compute.utf8_length(pa.compute.utf8_trim_whitespace(corpus.column("text")))
    queries = prepared.table(prepared.QUERIES, ["query_id", "split"])
    qrels = prepared.table(prepared.QRELS, ["query_id"])
    # Judged queries' candidates: pseudo-queries have counts of their own.
    cands = prepared.table(
        prepared.CANDIDATES, ["query_id"], ~pc.field("split").isin(pa.array(PSEUDO_SPLITS))
    )
    per_query = cands.group_by("query_id").aggregate([("query_id", "count")])
    sizes = per_query.column("query_id_count").to_pylist()
    split_counts = queries.group_by("split").aggregate([("split", "count")]).to_pylist()
    groups = prepared.table(
        prepared.GROUPS, ["split"], ~pc.field("split").isin(pa.array(PSEUDO_SPLITS))
    )
    pseudo_groups = prepared.table(
        prepared.GROUPS, ["split"], pc.field("split").isin(pa.array(PSEUDO_SPLITS))
    )
    return {
        "documents": len(ids),
        "empty_documents": int(pa.compute.sum(pa.compute.equal(lengths, 0)).as_py() or 0),
        "duplicate_document_ids": len(ids) - pa.compute.count_distinct(ids).as_py(),
        "queries": queries.num_rows,
        "queries_by_split": {r["split"]: r["split_count"] for r in split_counts},
        "qrels": qrels.num_rows,
        "judged_queries": pa.compute.count_distinct(qrels.column("query_id")).as_py(),
        "judged_queries_by_split": judged_queries_by_split(queries, qrels),
        "candidates": cands.num_rows,
        "queries_with_candidates": len(sizes),
        "queries_without_candidates": queries.num_rows - len(sizes),
        "candidates_per_query": {
            "min": min(sizes, default=0),
            "mean": sum(sizes) / max(1, len(sizes)),
            "max": max(sizes, default=0),
        },
        "groups": groups.num_rows,
        "pseudo_groups": {
            s: pc.sum(pc.equal(pseudo_groups["split"], s)).as_py() or 0 for s in PSEUDO_SPLITS
        },
    }


HOW_TO_RUN = tuple(
    f"first_stage.dense.{key}" for key in ("batch_size", "device", "actors", "trust_remote_code")
)


DENSE_ONLY = ("first_stage.kind", "first_stage.dense", "first_stage.hybrid_weight")


def stamp_settings(section: PrepareSection) -> dict:
    # overwrite, missing_docs and the embedding actors say how to run, not what is produced;
    # a BM25 folder's stamp has no dense keys, as folders prepared before there were any.
    ignored = ("overwrite", "missing_docs", *HOW_TO_RUN)
    if section.first_stage.kind == "bm25":
        ignored += DENSE_ONLY
    if section.pseudo_queries is None:  # folders prepared before there were any
        ignored += ("pseudo_queries",)
    return without(to_dict(section), ignored)


def check_first_stage(first_stage: FirstStageConfig, has_run: bool) -> None:
    """A dense or hybrid first stage's model package, checked before anything is written."""
    if first_stage.kind == "bm25" or has_run:
        return
    packaged = PACKAGED_EMBEDDERS.get(first_stage.dense.model)
    if packaged is not None:
        packaged.package_dir()  # a missing package: the exact pip install line
    if first_stage.dense.index == "hnsw":
        require_faiss()


def resolved_first_stage(
    first_stage: FirstStageConfig, out: PreparedData, has_run: bool, start: float
):
    """The first stage with its embeddings stored and its hybrid weight settled, and what
    counts.json records of it. A source's own run is its first stage, whatever `kind`."""
    if has_run:
        log("first stage: the source's run (prepare.first_stage.kind applies without one)", start)
        return first_stage, {"kind": "run"}
    record: dict = {"kind": first_stage.kind}
    if first_stage.kind == "bm25":
        return first_stage, record
    record["embeddings"] = embed_corpus(first_stage, out, lambda m: log(m, start))
    log(f"embeddings: {record['embeddings']}", start)
    if first_stage.kind == "hybrid":
        if first_stage.hybrid_weight is not None:
            record["hybrid"] = {"hybrid_weight": first_stage.hybrid_weight, "chosen_on": "config"}
        else:
            choice_path = out.path(HYBRID_CHOICE)
            if not storage.exists(choice_path):
                task = choose_hybrid_weight.options(**dense_resources(first_stage.dense))
                choice = ray.get(task.remote(out.root, first_stage))
                storage.write_text(choice_path, json.dumps(choice, indent=2) + "\n")
            record["hybrid"] = json.loads(storage.read_text(choice_path))
            hybrid = record["hybrid"]
            log(f"hybrid dense weight {hybrid['hybrid_weight']} ({hybrid['chosen_on']})", start)
        first_stage = replace(first_stage, hybrid_weight=record["hybrid"]["hybrid_weight"])
    return first_stage, record


def write_table(
    out: PreparedData, name: str, dataset, schema: pa.Schema, rows_per_file: int
) -> None:
    """A local table appears whole (written under a temporary name, then renamed); an
    object store cannot rename a folder, so there its `_SUCCESS` alone says it is whole.
    Files hold at most `rows_per_file` rows: the corpus's files are the units that dense
    embedding resumes by, so a one-file corpus must not become one file."""
    folder = out.path(name)
    target = folder if storage.is_uri(folder) else f"{folder}.partial"
    for stale in {folder, target}:  # what an interrupted attempt left
        storage.remove(stale)
    dataset.write_parquet(target, max_rows_per_file=rows_per_file)
    if not storage.exists(target):  # no rows: still a readable, empty table of the schema
        fs, inner = storage.resolve(target)
        fs.create_dir(inner)
        pq.write_table(schema.empty_table(), f"{inner}/empty.parquet", filesystem=fs)
    if target != folder:
        os.replace(target, folder)
    storage.write_text(storage.join(folder, out.marker), "")


def skip_reasons(rows) -> dict[str, int]:
    """How many rows of a materialised dataset carry each `skipped` reason."""
    reasons = rows.filter(expr=col("skipped") != "").select_columns(["skipped"]).to_pandas()
    return reasons["skipped"].value_counts().to_dict() if len(reasons) else {}


def log(message: str, start: float) -> None:
    print(f"[prepare {time.perf_counter() - start:6.1f}s] {message}", flush=True)


def prepare(cfg: PrepareConfig) -> dict:
    """Run every missing step and return the counts (also written to counts.json)."""
    section = cfg.prepare
    out = PreparedData(storage.absolute(section.output_dir))
    with claimed(out, stamp_settings(section), section.overwrite, PrepareError):
        return prepare_into(cfg, out)


def prepare_into(cfg: PrepareConfig, out: PreparedData) -> dict:
    section, source, root = cfg.prepare, cfg.prepare.source, out.root
    start = time.perf_counter()
    if out.is_complete():
        log(f"{root} is complete; nothing to do", start)
        return out.counts()
    has_run = bool(parts(source, "run"))
    check_first_stage(section.first_stage, has_run)
    init_ray(cfg.ray)

    def read(kind: str, schema: pa.Schema):
        return read_source(source, kind, schema, section.block_rows)

    def write(name: str, dataset, schema: pa.Schema) -> None:
        write_table(out, name, dataset, schema, section.block_rows)

    skipped: dict[str, dict[str, int]] = {}

    if not out.table_done(out.CORPUS):
        write(out.CORPUS, read("corpus", schemas.CORPUS), schemas.CORPUS)
        log("corpus written", start)
    if not out.table_done(out.QRELS):
        write(out.QRELS, read("qrels", schemas.QRELS), schemas.QRELS)
        log("qrels written", start)
    if not out.table_done(out.QUERIES):
        own = split_assignment(source)
        if own is not None:
            log(f"splits from the source ({own.kind}): {own.counts()}", start)
        raw = (
            read("queries", schemas.RAW_QUERIES)
            .map_batches(
                assign_splits,
                batch_format="pyarrow",
                fn_kwargs={
                    "seed": section.split_seed,
                    "fractions": section.splits,
                    "own": own.split_of if own is not None else None,
                },
            )
            .materialize()
        )
        if section.max_queries:
            # Judged queries only: qrels are written first so that a sample can be drawn of them.
            judged = set(out.table(out.QRELS, ["query_id"]).column("query_id").to_pylist())
            rows = raw.select_columns(["query_id", "split", "skipped"]).take_all()
            left_out = queries_over_caps(rows, section.max_queries, judged, section.split_seed)
            raw = raw.map_batches(
                mark_left_out, batch_format="pyarrow", fn_kwargs={"left_out": left_out}
            ).materialize()
        # The reasons first: a table marked done always has its skip counts beside it.
        reasons = {"empty_query": 0, **skip_reasons(raw)}
        storage.write_text(out.path(out.skipped_name(out.QUERIES)), json.dumps(reasons))
        write(
            out.QUERIES,
            raw.filter(expr=col("skipped") == "").drop_columns(["skipped"]),
            schemas.QUERIES,
        )
        log(f"queries written ({raw.count()} read; skipped: {reasons})", start)
        if reasons.get("no_split"):
            log(
                f"warning: {reasons['no_split']} queries are in none of the source's splits "
                "and are left out",
                start,
            )
    skipped["queries"] = json.loads(storage.read_text(out.path(out.skipped_name(out.QUERIES))))
    if has_run and not out.table_done(out.RUN):
        write(out.RUN, read("run", schemas.RUN), schemas.RUN)
        log("first-stage run written", start)

    if source.has_own_splits:
        # Checked before the first stage runs: a split without judgments is a wrong split
        # file or qrels file, and BM25 over the corpus would be time lost.
        judged = judged_queries_by_split(
            out.table(out.QUERIES, ["query_id", "split"]), out.table(out.QRELS, ["query_id"])
        )
        unjudged = [s for s, n in judged.items() if n == 0]
        if unjudged:
            raise PrepareError(
                f"split {unjudged[0]!r} of the source's splits has no judged query "
                f"(judged queries by split: {judged}); {root} is left incomplete"
            )
    references = ray.get(check_references.remote(root))
    missing = {k: v["missing_documents"] for k, v in references.items() if v["missing_documents"]}
    if missing:
        message = "; ".join(
            f"{k}: {v['missing_documents']} of {v['rows']} rows name documents missing from the "
            f"corpus (e.g. {', '.join(v['missing_document_examples'])})"
            for k, v in references.items()
            if v["missing_documents"]
        )
        if section.missing_docs == "fail":
            raise PrepareError(message + " (set prepare.missing_docs=warn to continue)")
        log(f"warning: {message}; those rows are left out of candidates and groups", start)

    first_stage, first_stage_record = resolved_first_stage(section.first_stage, out, has_run, start)
    if section.pseudo_queries is not None:
        pseudo = make_pseudo_queries(
            out,
            section.pseudo_queries,
            first_stage,
            has_run,
            cfg.model,
            cfg.template,
            write,
            lambda m: log(m, start),
        )
        log(
            f"pseudo-queries: {pseudo['kept']} kept of {pseudo['drafted']} drafted "
            f"{pseudo['kept_by_split']} (skipped: {pseudo['skipped']})",
            start,
        )
    queries, pseudo_rows = query_datasets(out)
    # Pseudo dev queries get candidates (the dev check reranks them); all get groups.
    pseudo_dev = (
        None if pseudo_rows is None else pseudo_rows.filter(expr=col("split") == PSEUDO_DEV)
    )
    udf_args = {"root": root, "config": first_stage, "has_run": has_run}
    # Dense and hybrid embed the queries in these actors: a GPU each with dense.device cuda.
    resources = {"num_cpus": 1}
    if first_stage_record["kind"] in ("dense", "hybrid"):
        resources = dense_resources(first_stage.dense)
    actors = {"compute": ActorPoolStrategy(size=1), "batch_format": "pyarrow", **resources}
    if not out.table_done(out.CANDIDATES):
        write(
            out.CANDIDATES,
            union(queries, pseudo_dev).map_batches(
                Candidates, fn_constructor_kwargs=udf_args, batch_size=512, **actors
            ),
            schemas.CANDIDATES,
        )
        log("candidates written", start)
    if not out.table_done(out.GROUPS):
        rows = (
            union(queries.filter(expr=col("split") != "test"), pseudo_rows)
            .map_batches(Groups, fn_constructor_kwargs=udf_args, batch_size=512, **actors)
            .materialize()
        )
        ok = rows.filter(expr=col("skipped") == "").drop_columns(["skipped"])
        storage.write_text(out.path(out.skipped_name(out.GROUPS)), json.dumps(skip_reasons(rows)))
        write(out.GROUPS, ok, schemas.GROUPS)
        log("training groups written", start)
    skipped["groups"] = json.loads(storage.read_text(out.path(out.skipped_name(out.GROUPS))))

    counts = ray.get(summarize.remote(root))
    counts["splits_from"] = source.splits_from
    counts["first_stage"] = first_stage_record
    counts["skipped"] = skipped
    if section.pseudo_queries is not None:
        counts["pseudo_queries"] = json.loads(storage.read_text(out.path(PSEUDO_SUMMARY)))
    counts["references"] = references
    if cfg.model is not None:
        counts["query_lengths"] = query_lengths(cfg, root)
    counts["seconds"] = round(time.perf_counter() - start, 1)
    storage.write_text(out.path(out.COUNTS), json.dumps(counts, indent=2) + "\n")
    out.mark_complete()
    return counts


def query_datasets(out: PreparedData):
    """The judged queries and the kept pseudo-queries (None without any), each with a `kind`
    column ("" for judged ones): what candidates and groups are made for."""
    queries = ray.data.read_parquet(out.path(out.QUERIES))
    pseudo = out.pseudo_queries()
    if not pseudo:
        return queries, None
    queries = queries.map_batches(with_kind, batch_format="pyarrow")
    table = pa.Table.from_pylist(
        [{**r, "answers": []} for r in pseudo],
        schema=schemas.QUERIES.append(pa.field("kind", pa.string(), nullable=False)),
    )
    return queries, ray.data.from_arrow(table)


def with_kind(batch: pa.Table) -> pa.Table:
    """A judged query table with an empty `kind` column, to stand beside pseudo-queries."""
    return batch.append_column("kind", pa.array([""] * batch.num_rows, pa.string()))


def union(queries, pseudo):
    return queries if pseudo is None else queries.union(pseudo)


def first_stage_line(record: dict) -> str:
    line = f"first stage: {record['kind']}"
    if "hybrid" in record:
        hybrid = record["hybrid"]
        line += f", dense weight {hybrid['hybrid_weight']} (chosen on {hybrid['chosen_on']})"
    if "embeddings" in record:
        e = record["embeddings"]
        line += (
            f"; {e['documents'] - e['empty_documents']} documents embedded with {e['model']} "
            f"({e['dim']} dimensions; {e['empty_documents']} empty, left out)"
        )
    return line + "\n"


def pseudo_line(pseudo: dict) -> str:
    line = (
        f"pseudo-queries ({pseudo['kind']}): {pseudo['kept']} kept of {pseudo['drafted']} "
        f"drafted from {pseudo['documents_sampled']} documents {pseudo['kept_by_split']}; "
        f"filter recall {pseudo['filter_recall']} at top {pseudo['keep_top_k']}; "
        f"skipped: {pseudo['skipped']}\n"
    )
    if cost := pseudo.get("generation"):
        line += (
            f"generation: {cost['documents']} documents in {cost['seconds']} s "
            f"({cost['documents_per_second']} documents/s, {cost['new_tokens_per_second']} "
            f"tokens/s, peak {cost['peak_rss_mb']} MB)\n"
        )
    return line


def print_counts(counts: dict, root: str) -> None:
    per = counts["candidates_per_query"]
    print(
        f"documents: {counts['documents']} ({counts['empty_documents']} empty, "
        f"{counts['duplicate_document_ids']} duplicate ids)\n"
        f"queries: {counts['queries']} {counts['queries_by_split']} "
        f"(skipped: {counts['skipped']['queries']})\n"
        f"qrels: {counts['qrels']} over {counts['judged_queries']} judged queries\n"
        f"candidates: {counts['candidates']} ({per['min']}-{per['max']} per query, "
        f"mean {per['mean']:.1f}; {counts['queries_without_candidates']} queries without any)\n"
        f"groups: {counts['groups']} (skipped: {counts['skipped']['groups']})\n"
        + first_stage_line(counts.get("first_stage", {"kind": "bm25"}))
        + (pseudo_line(pseudo) if (pseudo := counts.get("pseudo_queries")) else "")
        + (
            f"queries over template.max_query_tokens={lengths['max_query_tokens']} "
            f"({lengths['model']} tokens): {lengths['queries_over_limit']}, longest "
            f"{lengths['longest_query_tokens']} (template.long_queries={lengths['long_queries']})\n"
            if (lengths := counts.get("query_lengths"))
            else ""
        )
        + f"shards and counts.json in {root}"
    )


def main(argv: list[str] | None = None) -> None:
    cfg = step_config(PrepareConfig, __doc__.splitlines()[0], argv)
    counts = prepare(cfg)
    print_counts(counts, storage.absolute(cfg.prepare.output_dir))


if __name__ == "__main__":
    sys.exit(run_as_module("pipelines.prepare"))
