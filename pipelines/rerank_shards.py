"""The bookkeeping that makes reranking resumable and exactly-once, without Ray.

Queries are cut into shards of consecutive queries (in the candidate files' order). A
shard's file is written (atomically) only once every one of its candidates has a score, so
a shard file on disk is always complete; an interrupted run resumes by scoring only the
shards that have no file. At the end every expected (query, document) pair must appear
exactly once across the shard files.
"""

from __future__ import annotations

import os
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
    """Which candidates belong to which shard, fixed by the candidate files' query order."""

    shard_of_query: dict[str, int]
    expected: list[set[Key]]

    @classmethod
    def build(cls, keys: pa.Table, queries_per_shard: int, where: str) -> ShardPlan:
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
        # Shards follow the order queries appear in the candidate files, which is about the
        # order Ray Data streams them: shards then complete one after another, and an
        # interrupted run loses little. (Sorted ids would spread each shard over every file.)
        queries = list(dict.fromkeys(q for q, _ in pairs))
        shard_of_query = {q: i // queries_per_shard for i, q in enumerate(queries)}
        n_shards = (len(queries) + queries_per_shard - 1) // queries_per_shard
        expected: list[set[Key]] = [set() for _ in range(n_shards)]
        for q, d in pairs:
            expected[shard_of_query[q]].add((q, d))
        return cls(shard_of_query, expected)

    @property
    def pairs(self) -> int:
        return sum(len(s) for s in self.expected)

    def queries_of(self, shards: list[int]) -> list[str]:
        wanted = set(shards)
        return [q for q, s in self.shard_of_query.items() if s in wanted]


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
            shard = self.plan.shard_of_query.get(key[0])
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
    """Rank the shard's rows and write them under a temporary name, then rename."""
    path = shard_path(directory, shard)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(schemas.table(rank_candidates(rows), schemas.RERANKED), partial)
    os.replace(partial, path)


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
