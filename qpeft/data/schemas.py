"""Arrow schemas of the parquet shards that `qpeft prepare` writes (see docs/data.md).

Every later step reads these and nothing else, so they are the contract between data
preparation, training, reranking and evaluation.
"""

from __future__ import annotations

import pyarrow as pa

# One row per document. `title` is "" where the source has none.
CORPUS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)

# One row per usable query. `split` is train/dev/test, deterministic by seed and id.
# `answers` holds the gold answers of QA data (empty list for judged IR data).
QUERIES = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("answers", pa.list_(pa.string()), nullable=False),
    ]
)

# Graded judgments as the source gives them (negative grades kept; metrics clip at 0).
QRELS = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("relevance", pa.int32(), nullable=False),
    ]
)

# First-stage candidates joined with query and document text: what reranking scores.
# `rank` starts at 1; `relevance` is null where the pair is unjudged. `first_stage_score`
# orders the list (hybrid: the fused score); `bm25_score` and `dense_score` are the source
# lists' own scores, null where the candidate was not in that list (or the source's run
# ranked it).
CANDIDATES = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("first_stage_score", pa.float32(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("relevance", pa.int32(), nullable=True),
        pa.field("bm25_score", pa.float32(), nullable=True),
        pa.field("dense_score", pa.float32(), nullable=True),
    ]
)

# One training group per train/dev query: a positive and hard negatives, texts included.
GROUPS = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("positive_id", pa.string(), nullable=False),
        pa.field("positive_text", pa.string(), nullable=False),
        pa.field("negative_ids", pa.list_(pa.string()), nullable=False),
        pa.field("negative_texts", pa.list_(pa.string()), nullable=False),
    ]
)


# A first-stage run as given (only when the source has one), ranked later by score.
RUN = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
    ]
)
# A scored pair before its query's ranking is known (a document-major rerank shard).
SCORED_PAIRS = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("first_stage_rank", pa.int32(), nullable=False),
        pa.field("first_stage_score", pa.float32(), nullable=False),
    ]
)
# A reranked run (`qpeft rerank`): one row per scored candidate. `rank` starts at 1 and
# orders by `score` descending, ties by first-stage rank.
RERANKED = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("first_stage_rank", pa.int32(), nullable=False),
        pa.field("first_stage_score", pa.float32(), nullable=False),
    ]
)

# Every pseudo-query draft (`prepare.pseudo_queries`, qpeft/data/pseudo_queries.py): its
# kind (title or generate), source document, split (pseudo_train / pseudo_dev), the first
# stage's rank of its source document (null: not ranked, or not in the top `depth`) and why
# it is left out ("" for a kept query, which is judged relevant to its source alone).
PSEUDO_QUERIES = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source_rank", pa.int32(), nullable=True),
        pa.field("skipped", pa.string(), nullable=False),
    ]
)

# Queries as read, before splits are assigned and blank ones are skipped.
RAW_QUERIES = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("answers", pa.list_(pa.string()), nullable=False),
    ]
)


def with_skipped(schema: pa.Schema) -> pa.Schema:
    """`schema` plus the reason a row is left out of the output ("" for kept rows)."""
    return schema.append(pa.field("skipped", pa.string(), nullable=False))


def table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows as a table of exactly `schema` (a missing or mistyped column fails here)."""
    return pa.Table.from_pylist(rows, schema=schema)
