"""The pseudo-query side of `qpeft prepare` (`prepare.pseudo_queries`, see
`qpeft/data/pseudo_queries.py` for what the queries are).

1. Sample documents (seeded, nested). A title draft is one per sampled document.
2. Generate (kind `generate` or `both`): Ray Data `map_batches` on an actor pool holding the
   packaged LM. A row is a shard of `shard_docs` documents; each shard's queries are written
   to `pseudo_generated/shard-NNNNN.parquet` under a temporary name and renamed once whole,
   so a killed run generates only the shards without a file, never one twice. At the end
   every sampled document must have its `per_doc` queries exactly once.
3. Check the drafts (blank, a copy of the document's start, one text for several documents)
   and rank each with the first stage (`FirstStage` on an actor, as candidates are made):
   kept if its source document is in the top `keep_top_k`.
4. Write the `pseudo_queries` table: every draft with its split, source rank and skip
   reason; `pseudo_queries.json` beside it holds the counts and the generation's cost.
"""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import ActorPoolStrategy

from pipelines.prepare_dense import name_of, write_shard
from qpeft import storage
from qpeft.artifacts import PreparedData
from qpeft.config import ConfigError, ModelConfig, TemplateConfig
from qpeft.data import schemas
from qpeft.data.dense_index import shard_name, stored_shards
from qpeft.data.first_stage import FirstStage, FirstStageConfig, title_queries
from qpeft.data.pseudo_queries import (
    PSEUDO_SPLITS,
    PseudoQueriesConfig,
    draft,
    first_check,
    mark_duplicates,
    sample_documents,
    skip_counts,
    title_drafts,
)
from qpeft.data.readers import DataError
from qpeft.data.sources import full_text

GENERATED = "pseudo_generated"
SUMMARY = "pseudo_queries.json"

# One generation shard: a row each, its documents' queries as lists.
GENERATED_SHARD = pa.schema(
    [
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("doc_ids", pa.list_(pa.string()), nullable=False),
        pa.field("queries", pa.list_(pa.list_(pa.string())), nullable=False),
        pa.field("prompt_tokens", pa.int64(), nullable=False),
        pa.field("new_tokens", pa.int64(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),
        pa.field("peak_rss_mb", pa.float64(), nullable=False),
    ]
)


class WriteQueries:
    """Ray Data UDF: shard rows (shard, doc_ids, texts) -> their queries, one row a shard."""

    def __init__(self, model: ModelConfig, template: TemplateConfig, config: PseudoQueriesConfig):
        import torch

        from qpeft.lm.query_writer import QueryWriter

        # The only work running while the actor lives: the node's cores are its own.
        torch.set_num_threads(os.cpu_count() or 1)
        self.writer = QueryWriter(model, template)
        self.config = config

    def __call__(self, batch: pa.Table) -> pa.Table:
        config, rows = self.config, []
        for shard in batch.to_pylist():
            queries: list[list[str]] = []
            prompt = new = 0
            seconds = 0.0
            for start in range(0, len(shard["texts"]), config.batch_size):
                written = self.writer.write(
                    shard["texts"][start : start + config.batch_size],
                    config.per_doc,
                    config.max_new_tokens,
                    config.temperature,
                    config.top_p,
                    seed=config.seed * 1_000_003 + shard["shard"] * 1_009 + start,
                )
                queries += written.queries
                prompt, new = prompt + written.prompt_tokens, new + written.new_tokens
                seconds += written.seconds
            rows.append(
                {
                    "shard": shard["shard"],
                    "doc_ids": shard["doc_ids"],
                    "queries": queries,
                    "prompt_tokens": prompt,
                    "new_tokens": new,
                    "seconds": seconds,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            )
        return schemas.table(rows, GENERATED_SHARD)


def generation_plan(documents: list[dict], shard_docs: int, separator: str | None) -> list[dict]:
    """Shards of the sampled documents in a fixed order: shard i is always the same ids."""
    return [
        {
            "shard": i // shard_docs,
            "doc_ids": [d["doc_id"] for d in documents[i : i + shard_docs]],
            "texts": [
                full_text(d["title"], d["text"], separator) for d in documents[i : i + shard_docs]
            ],
        }
        for i in range(0, len(documents), shard_docs)
    ]


def generate(
    out: PreparedData,
    documents: list[dict],
    config: PseudoQueriesConfig,
    model: ModelConfig,
    template: TemplateConfig,
    separator: str | None,
    log: Callable[[str], None],
) -> tuple[dict[str, list[str]], dict]:
    """Every sampled document's generated queries, generating only the missing shards;
    and what generating cost (this run's shards, and all of them)."""
    folder = out.path(GENERATED)
    fs, inner = storage.resolve(folder)
    fs.create_dir(inner, recursive=True)
    plan = generation_plan(documents, config.shard_docs, separator)
    done = {name_of(p) for p in stored_shards(folder)}
    todo = [s for s in plan if shard_name(s["shard"]) not in done]
    if todo:
        log(
            f"generating {config.per_doc} queries each for {sum(len(s['doc_ids']) for s in todo)} "
            f"documents ({len(todo)} of {len(plan)} shards) with {model.name}"
        )
        shards = (
            ray.data.from_items(todo, override_num_blocks=len(todo))
            .map_batches(
                WriteQueries,
                fn_constructor_kwargs={"model": model, "template": template, "config": config},
                compute=ActorPoolStrategy(size=1),
                batch_size=1,
                batch_format="pyarrow",
                num_cpus=1,
            )
            # Each shard is written as soon as it is generated: fetching ahead held shard 0
            # back until shard 1 was done, so a kill lost a finished shard.
            .iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0)
        )
        for batch in shards:
            for i in range(batch.num_rows):
                row = batch.slice(i, 1)
                write_shard(folder, row.column("shard")[0].as_py(), row)
                log(f"generation shard {row.column('shard')[0].as_py()} written")
    return collect(folder, plan, config.per_doc, len(todo))


def collect(
    folder: str, plan: list[dict], per_doc: int, shards_this_run: int
) -> tuple[dict[str, list[str]], dict]:
    """Read every shard back and check each planned document has its queries exactly once."""
    rows = [
        row
        for path in sorted(stored_shards(folder))
        for row in storage.read_parquet(path).to_pylist()
    ]
    by_doc: dict[str, list[str]] = {}
    for row in rows:
        for doc_id, queries in zip(row["doc_ids"], row["queries"], strict=True):
            if doc_id in by_doc or len(queries) != per_doc:
                raise DataError(
                    f"{folder}: document {doc_id!r} has {len(queries)} queries or appears "
                    "twice; delete the folder and re-run"
                )
            by_doc[doc_id] = queries
    planned = {d for shard in plan for d in shard["doc_ids"]}
    if set(by_doc) != planned:
        raise DataError(
            f"{folder}: queries for {len(by_doc)} documents, {len(planned)} planned; "
            "delete the folder and re-run"
        )
    seconds = sum(r["seconds"] for r in rows)
    new_tokens = sum(r["new_tokens"] for r in rows)
    cost = {
        "documents": len(by_doc),
        "queries": len(by_doc) * per_doc,
        "shards": len(rows),
        "shards_this_run": shards_this_run,
        "seconds": round(seconds, 1),
        "documents_per_second": round(len(by_doc) / seconds, 3) if seconds else None,
        "new_tokens_per_second": round(new_tokens / seconds, 1) if seconds else None,
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "new_tokens": new_tokens,
        "peak_rss_mb": round(max((r["peak_rss_mb"] for r in rows), default=0.0), 1),
    }
    return by_doc, cost


class RankSources:
    """Ray Data UDF: drafts -> the first stage's rank of each one's source document."""

    def __init__(self, root: str, config: FirstStageConfig, has_run: bool, keep_top_k: int):
        self.stage = FirstStage(root, config, has_run)
        self.keep_top_k = keep_top_k

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        ranked = self.stage.ranked(
            [r["query_id"] for r in rows], [r["text"] for r in rows], title_queries(batch)
        )
        for row, hits in zip(rows, ranked, strict=True):
            ids = [hit.doc_id for hit in hits]
            row["source_rank"] = ids.index(row["doc_id"]) + 1 if row["doc_id"] in ids else None
            if row["source_rank"] is None or row["source_rank"] > self.keep_top_k:
                row["skipped"] = "beyond_top_k"
        return schemas.table(rows, schemas.PSEUDO_QUERIES)


def sampled_documents(out: PreparedData, config: PseudoQueriesConfig, log) -> list[dict]:
    """The sample's documents (doc_id, title, text), one row per id, in id order."""
    corpus_ids = out.table(out.CORPUS, ["doc_id"]).column("doc_id").to_pylist()
    chosen = sample_documents(corpus_ids, config.docs, config.seed)
    if len(chosen) < config.docs:
        log(
            f"warning: prepare.pseudo_queries.docs is {config.docs}, the corpus has "
            f"{len(chosen)} documents: all of them are used"
        )
    table = out.table(out.CORPUS, filter=pc.field("doc_id").isin(pa.array(chosen, pa.string())))
    first: dict[str, dict] = {}
    for row in table.to_pylist():
        first.setdefault(row["doc_id"], row)
    return [first[d] for d in chosen]


def check_titles(out: PreparedData) -> None:
    """`kind: title` on a corpus without a single title is a wrong corpus or field."""
    titles = out.table(out.CORPUS, ["title"]).column("title")
    if not pc.any(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(titles)), 0)).as_py():
        raise ConfigError(
            f"prepare.pseudo_queries.kind: title, but no document of {out.path(out.CORPUS)} "
            "has a title (use kind: generate)"
        )


def drafts_of(
    documents: list[dict],
    config: PseudoQueriesConfig,
    generated: dict[str, list[str]],
    separator: str | None,
) -> list[dict]:
    """Title and generated drafts, checked one by one and then against each other."""
    rows = []
    if "title" in config.kinds:
        rows += title_drafts(documents, config.seed, config.dev_fraction)
    for doc in documents:
        if doc["doc_id"] not in generated:  # kind title: nothing generated
            continue
        text = full_text(doc["title"], doc["text"], separator)
        for index, query in enumerate(generated[doc["doc_id"]]):
            reason = first_check(query, text)
            rows.append(
                draft(
                    "generate",
                    doc["doc_id"],
                    index,
                    query,
                    config.seed,
                    config.dev_fraction,
                    reason,
                )
            )
    return mark_duplicates(rows)


def make_pseudo_queries(
    out: PreparedData,
    config: PseudoQueriesConfig,
    first_stage: FirstStageConfig,
    has_run: bool,
    model: ModelConfig | None,
    template: TemplateConfig,
    write_table: Callable,
    log: Callable[[str], None],
) -> dict:
    """Write the `pseudo_queries` table (and its summary) unless it is done; the summary."""
    summary_path = out.path(SUMMARY)
    if out.table_done(out.PSEUDO_QUERIES):
        return json.loads(storage.read_text(summary_path))
    if "title" in config.kinds:
        check_titles(out)
    judged = set(out.table(out.QUERIES, ["query_id"]).column("query_id").to_pylist())
    documents = sampled_documents(out, config, log)
    generated, cost = {}, None
    if config.generates:
        if model is None:
            raise ConfigError("model: prepare.pseudo_queries.kind generate needs a model to write")
        from qpeft.lm.backbone import pin_model  # torch: only when there is an LM to run

        # Converted once here, and read from this cache by the actors wherever they run.
        pinned = pin_model(model)
        generated, cost = generate(
            out, documents, config, pinned, template, first_stage.title_separator, log
        )
    drafts = drafts_of(documents, config, generated, first_stage.title_separator)
    clash = next((d["query_id"] for d in drafts if d["query_id"] in judged), None)
    if clash:
        raise DataError(
            f"{out.path(out.QUERIES)}: a judged query has the pseudo-query id {clash!r}"
        )
    usable = [d for d in drafts if not d["skipped"]]
    log(f"{len(drafts)} pseudo-query drafts, {len(usable)} ranked by the first stage")
    ranked = (
        ray.data.from_arrow(schemas.table(usable, schemas.PSEUDO_QUERIES))
        .map_batches(
            RankSources,
            fn_constructor_kwargs={
                "root": out.root,
                "config": first_stage,
                "has_run": has_run,
                "keep_top_k": config.keep_top_k,
            },
            compute=ActorPoolStrategy(size=1),
            batch_size=512,
            batch_format="pyarrow",
            num_cpus=1,
        )
        .take_all()
    )
    rows = [d for d in drafts if d["skipped"]] + ranked
    summary = pseudo_summary(rows, config, len(documents), cost)
    storage.write_text(summary_path, json.dumps(summary, indent=2) + "\n")  # before _SUCCESS
    write_table(
        out.PSEUDO_QUERIES,
        ray.data.from_arrow(schemas.table(rows, schemas.PSEUDO_QUERIES)),
        schemas.PSEUDO_QUERIES,
    )
    return summary


def pseudo_summary(rows: list[dict], config: PseudoQueriesConfig, documents: int, cost) -> dict:
    """Drafted, kept and dropped queries (by kind, split and reason) and the filter's recall:
    of the drafts the first stage ranked, the share whose source document it put in the
    top `keep_top_k`."""
    ranked = [r for r in rows if r["skipped"] in ("", "beyond_top_k")]
    kept = [r for r in rows if not r["skipped"]]
    by_kind = {
        kind: {
            "drafted": sum(r["kind"] == kind for r in rows),
            "kept": sum(r["kind"] == kind for r in kept),
            "skipped": skip_counts([r for r in rows if r["kind"] == kind]),
        }
        for kind in config.kinds
    }
    return {
        "kind": config.kind,
        "documents_sampled": documents,
        "drafted": len(rows),
        "kept": len(kept),
        "kept_by_split": {s: sum(r["split"] == s for r in kept) for s in PSEUDO_SPLITS},
        "skipped": skip_counts(rows),
        "by_kind": by_kind,
        "keep_top_k": config.keep_top_k,
        "filter_recall": round(len(kept) / len(ranked), 4) if ranked else None,
        "source_rank_1": sum(r["source_rank"] == 1 for r in ranked),
        "generation": cost,
    }
