"""The bookkeeping that makes reranking resumable and exactly-once, without Ray.

Scoring is document-major: the candidates' documents, in id order, are cut into shards of
consecutive documents, and each shard holds every pair of its documents, so the scorer
computes a document's prefix once for all its queries. A shard's file is written
(atomically) only once every one of its pairs has a score, so a shard file on disk is
always complete; an interrupted run resumes by scoring only the shards that have no file.
At the end every expected (query, document) pair must appear exactly once across the shard
files, and the run is assembled per query (`assemble_run`).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from qpeft.data import schemas
from qpeft.data.readers import DataError
from qpeft.data.runs import rank_candidates

Key = tuple[str, str]


class ExactlyOnceError(DataError):
    """Scores are missing, duplicated or unexpected; the run is left incomplete."""


@dataclass
class ShardPlan:
    """Which candidates belong to which shard: shards of consecutive document ids."""

    shard_of_doc: dict[str, int]
    expected: list[set[Key]]
    queries: list[str]

    @classmethod
    def build(cls, keys: pa.Table, docs_per_shard: int, where: str) -> ShardPlan:
        """From a table of `query_id, doc_id` candidate keys; a pair listed twice is an
        input error (it would be scored twice)."""
        pairs = list(
            zip(keys.column("query_id").to_pylist(), keys.column("doc_id").to_pylist(), strict=True)
        )
        repeated = [k for k, n in Counter(pairs).items() if n > 1]
        if repeated:
            q, d = repeated[0]
            raise DataError(
                f"{where}: {len(repeated)} (query, document) pairs appear more than once, "
                f"e.g. query {q} document {d}"
            )
        # Documents in id order, the order Ray Data's sort streams them in: shards then
        # complete one after another, and an interrupted run loses little.
        docs = sorted({d for _, d in pairs})
        shard_of_doc = {d: i // docs_per_shard for i, d in enumerate(docs)}
        n_shards = (len(docs) + docs_per_shard - 1) // docs_per_shard
        expected: list[set[Key]] = [set() for _ in range(n_shards)]
        for q, d in pairs:
            expected[shard_of_doc[d]].add((q, d))
        return cls(shard_of_doc, expected, sorted({q for q, _ in pairs}))

    @property
    def pairs(self) -> int:
        return sum(len(s) for s in self.expected)

    def docs_of(self, shards: list[int]) -> list[str]:
        wanted = set(shards)
        return [d for d, s in self.shard_of_doc.items() if s in wanted]


def shard_path(directory: Path, shard: int) -> Path:
    return directory / f"shard-{shard:05d}.parquet"


def finished_shards(directory: Path, plan: ShardPlan) -> list[int]:
    return [i for i in range(len(plan.expected)) if shard_path(directory, i).exists()]


@dataclass
class ShardCollector:
    """Buffers scored rows until a shard is complete; rejects a pair scored twice or not
    asked for as soon as it arrives."""

    plan: ShardPlan
    buffers: dict[int, dict[Key, dict]] = field(default_factory=dict)

    def add(self, rows: list[dict]) -> list[tuple[int, list[dict]]]:
        """Add scored rows; return the shards they completed, with all their rows."""
        touched = set()
        for row in rows:
            key = (row["query_id"], row["doc_id"])
            shard = self.plan.shard_of_doc.get(key[1])
            if shard is None or key not in self.plan.expected[shard]:
                raise ExactlyOnceError(f"scored a pair that was not asked for: {key}")
            buffer = self.buffers.setdefault(shard, {})
            if key in buffer:
                raise ExactlyOnceError(f"pair scored twice: query {key[0]} document {key[1]}")
            buffer[key] = row
            touched.add(shard)
        done = [s for s in sorted(touched) if len(self.buffers[s]) == len(self.plan.expected[s])]
        return [(s, list(self.buffers.pop(s).values())) for s in done]

    @property
    def pending_pairs(self) -> int:
        return sum(len(b) for b in self.buffers.values())


def write_shard(directory: Path, shard: int, rows: list[dict]) -> None:
    """Write a shard's scored pairs under a temporary name, then rename."""
    path = shard_path(directory, shard)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(schemas.table(rows, schemas.SCORED_PAIRS), partial)
    os.replace(partial, path)


def assemble_run(shards_dir: Path, run_dir: Path, queries_per_file: int = 1000) -> list[dict]:
    """The verified document shards as a run: ranked per query (score descending, ties by
    first-stage rank), written to `run_dir` in files of whole queries. The folder appears
    by a rename, complete; one left by an invocation killed before publishing is
    replaced. The shards stay until the run is published. Returns the ranked rows."""
    table = pads.dataset(str(shards_dir), format="parquet").to_table()
    rows = rank_candidates(table.to_pylist())
    staging = run_dir.with_name(run_dir.name + ".assembling")
    for stale in (staging, run_dir):
        if stale.exists():
            shutil.rmtree(stale)
    staging.mkdir()
    by_query: dict[str, list[dict]] = {}
    for row in rows:
        by_query.setdefault(row["query_id"], []).append(row)
    queries = list(by_query)
    for start in range(0, len(queries), queries_per_file):
        part = [r for q in queries[start : start + queries_per_file] for r in by_query[q]]
        path = shard_path(staging, start // queries_per_file)
        pq.write_table(schemas.table(part, schemas.RERANKED), path)
    os.replace(staging, run_dir)
    return rows


def verify(directory: Path, plan: ShardPlan) -> dict:
    """Counts proving every expected pair was scored exactly once; raises if not."""
    table = pads.dataset(str(directory), format="parquet").to_table(columns=["query_id", "doc_id"])
    found = Counter(
        zip(table.column("query_id").to_pylist(), table.column("doc_id").to_pylist(), strict=True)
    )
    expected = set().union(*plan.expected) if plan.expected else set()
    counts = {
        "pairs_expected": len(expected),
        "pairs_written": table.num_rows,
        "duplicated": sum(1 for n in found.values() if n > 1),
        "missing": len(expected - set(found)),
        "unexpected": len(set(found) - expected),
    }
    if counts["duplicated"] or counts["missing"] or counts["unexpected"]:
        raise ExactlyOnceError(
            f"{directory}: scores are not exactly once per candidate: {counts}; "
            "the run is left incomplete"
        )
    return counts
