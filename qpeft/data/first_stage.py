"""Candidates and training groups for a batch of queries, from BM25 or a given run.

`FirstStage` is built once per worker from the prepared parquet shards (corpus, qrels and,
if the source had one, a first-stage run) and then maps query tables to candidate and
group tables. With a run it loads only the documents the run and the positives name; with
BM25 it indexes the whole corpus in that worker.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from qpeft.artifacts import PreparedData
from qpeft.data import schemas
from qpeft.data.bm25 import BM25Index
from qpeft.data.groups import choose_group
from qpeft.data.sources import full_text


@dataclass
class FirstStageConfig:
    depth: int = 100
    bm25_k1: float = 0.9
    bm25_b: float = 0.4
    min_relevance: int = 1
    negatives: int = 7
    negative_depth: int = 30
    seed: int = 13
    # How a title joins its body in the text BM25 indexes and the reranker reads: "\n"
    # (default) keeps the title as its own first line; " " is BEIR's dense-retrieval
    # convention (title + " " + text); null leaves titles out.
    title_separator: str | None = "\n"


class FirstStage:
    def __init__(self, root: str, config: FirstStageConfig, has_run: bool):
        self.config = config
        prepared = PreparedData(root)
        self.judgments = prepared.qrels()
        self.run: dict[str, list[tuple[str, float]]] | None = None
        if has_run:
            rows = prepared.table(prepared.RUN).to_pylist()
            grouped: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
            for row in rows:
                grouped[row["query_id"]].append((row["score"], row["rank"], row["doc_id"]))
            # Rank by score (ties: the source's rank): scoreddocs files are not always sorted.
            self.run = {
                q: [(d, s) for s, _, d in sorted(v, key=lambda t: (-t[0], t[1]))][: config.depth]
                for q, v in grouped.items()
            }
            needed = {d for hits in self.run.values() for d, _ in hits}
            needed |= {
                d
                for j in self.judgments.values()
                for d, g in j.items()
                if g >= config.min_relevance
            }
            corpus = prepared.table(
                prepared.CORPUS,
                filter=pc.field("doc_id").isin(pa.array(sorted(needed))),
            )
        else:
            corpus = prepared.table(prepared.CORPUS)
        ids = corpus.column("doc_id").to_pylist()
        texts = [
            full_text(t, x, config.title_separator)
            for t, x in zip(
                corpus.column("title").to_pylist(), corpus.column("text").to_pylist(), strict=True
            )
        ]
        self.texts = dict(zip(ids, texts, strict=True))
        self.index = None if has_run else BM25Index(ids, texts, config.bm25_k1, config.bm25_b)

    def ranked(self, query_ids: list[str], queries: list[str]) -> list[list[tuple[str, float]]]:
        """Top-`depth` (doc_id, score) per query, limited to documents with text."""
        if self.run is not None:
            return [[(d, s) for d, s in self.run.get(q, []) if d in self.texts] for q in query_ids]
        return self.index.search(queries, self.config.depth)

    def candidates(self, batch: pa.Table) -> pa.Table:
        """Candidate rows (schema CANDIDATES) for a table of queries."""
        qids, texts, splits = (batch.column(c).to_pylist() for c in ("query_id", "text", "split"))
        rows = []
        for qid, query, split, hits in zip(
            qids, texts, splits, self.ranked(qids, texts), strict=True
        ):
            judged = self.judgments.get(qid, {})
            rows += [
                {
                    "query_id": qid,
                    "query": query,
                    "split": split,
                    "doc_id": d,
                    "rank": r,
                    "first_stage_score": s,
                    "text": self.texts[d],
                    "relevance": judged.get(d),
                }
                for r, (d, s) in enumerate(hits, 1)
            ]
        return schemas.table(rows, schemas.CANDIDATES)

    def groups(self, batch: pa.Table) -> pa.Table:
        """One row per query: a group, or (`skipped` set) the reason there is none."""
        qids, texts, splits = (batch.column(c).to_pylist() for c in ("query_id", "text", "split"))
        rows = []
        for qid, query, split, hits in zip(
            qids, texts, splits, self.ranked(qids, texts), strict=True
        ):
            rng = random.Random(f"{self.config.seed}:{qid}")
            judged = {d: g for d, g in self.judgments.get(qid, {}).items() if d in self.texts}
            choice = choose_group(
                [d for d, _ in hits],
                judged,
                self.config.min_relevance,
                self.config.negatives,
                self.config.negative_depth,
                rng,
            )
            rows.append(
                {
                    "query_id": qid,
                    "query": query,
                    "split": split,
                    "positive_id": choice.positive_id or "",
                    "positive_text": self.texts.get(choice.positive_id, ""),
                    "negative_ids": choice.negative_ids,
                    "negative_texts": [self.texts[d] for d in choice.negative_ids],
                    "skipped": choice.skipped or "",
                }
            )
        return schemas.table(rows, schemas.with_skipped(schemas.GROUPS))
