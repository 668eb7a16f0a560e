"""Candidates and training groups for a batch of queries: BM25, dense, hybrid or a given run.

`FirstStage` is built once per worker from the prepared parquet shards (corpus, qrels,
stored embeddings and, if the source had one, a first-stage run) and then maps query tables
to candidate and group tables. With a run it loads only the documents the run and the
positives name; with BM25 it indexes the whole corpus in that worker; dense and hybrid
embed the queries there and search the embeddings `qpeft prepare` stored.

Title pseudo-queries (`prepare.pseudo_queries`) are searched by BM25 over the documents'
bodies, and every document they rank is read without its title: with it, the source
document would hold its query word for word (and the stored dense vectors include titles).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from qpeft.artifacts import PreparedData
from qpeft.config import ConfigError
from qpeft.data import schemas
from qpeft.data.bm25 import BM25Index
from qpeft.data.dense_index import HnswIndex, StoredEmbeddings, exact_search
from qpeft.data.groups import choose_group
from qpeft.data.hybrid import Hit, fuse
from qpeft.data.pseudo_queries import without_title
from qpeft.data.sources import full_text
from qpeft.embedding import DenseConfig, Encoder


@dataclass
class FirstStageConfig:
    # Without a run of the source's own: hybrid (BM25 and dense fused, qpeft/data/hybrid.py,
    # the dense weight chosen on dev; dev ranked it first on NFCorpus and Cranfield,
    # results/<collection>/first_stage), bm25, or dense (exact inner product or HNSW).
    kind: Literal["bm25", "dense", "hybrid"] = "hybrid"
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
    dense: DenseConfig = field(default_factory=DenseConfig)
    # hybrid: the dense list's weight in the fusion; null: chosen on the dev queries by
    # NDCG@10 when the folder is prepared (recorded in first_stage.json).
    hybrid_weight: float | None = None

    def validate(self) -> None:
        if self.hybrid_weight is not None and not 0 <= self.hybrid_weight <= 1:
            raise ConfigError("prepare.first_stage.hybrid_weight: must be in [0, 1] or null")
        if self.depth <= 0:
            raise ConfigError("prepare.first_stage.depth: must be positive")


class DenseRetriever:
    """Queries embedded here, searched over the embeddings stored in the prepared folder."""

    def __init__(self, root: str, config: FirstStageConfig):
        self.encoder = Encoder(config.dense)
        self.store = StoredEmbeddings.of(root)
        self.hnsw = HnswIndex(self.store, config.depth) if config.dense.index == "hnsw" else None

    def search(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        vectors = self.encoder.encode(queries, queries=True)
        if self.hnsw is not None:
            return self.hnsw.search(vectors, k)
        return exact_search(vectors, self.store, k)


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
        self.root = root
        self._bodies: tuple[dict[str, str], BM25Index] | None = None
        lexical = not has_run and config.kind != "dense"
        self.index = BM25Index(ids, texts, config.bm25_k1, config.bm25_b) if lexical else None
        dense = not has_run and config.kind != "bm25"
        self.dense = DenseRetriever(root, config) if dense else None

    def lists(self, queries: list[str]) -> tuple[list, list]:
        """BM25's and the dense retriever's top `depth` per query (empty where unused)."""
        depth, none = self.config.depth, [[] for _ in queries]
        bm25 = self.index.search(queries, depth) if self.index is not None else none
        dense = self.dense.search(queries, depth) if self.dense is not None else none
        return bm25, dense

    def bodies(self) -> tuple[dict[str, str], BM25Index]:
        """Documents without their titles (`without_title`) and a BM25 index of them, built
        on first use."""
        if self._bodies is None:
            corpus = PreparedData(self.root).table(PreparedData.CORPUS)
            ids = corpus.column("doc_id").to_pylist()
            texts = [
                without_title(title, text)
                for title, text in zip(
                    corpus.column("title").to_pylist(),
                    corpus.column("text").to_pylist(),
                    strict=True,
                )
            ]
            kept = [(d, t) for d, t in zip(ids, texts, strict=True) if t]
            index = BM25Index(
                [d for d, _ in kept], [t for _, t in kept], self.config.bm25_k1, self.config.bm25_b
            )
            self._bodies = dict(kept), index
        return self._bodies

    def texts_for(self, title_query: bool) -> dict[str, str]:
        return self.bodies()[0] if title_query else self.texts

    def ranked(
        self, query_ids: list[str], queries: list[str], titles: list[bool] | None = None
    ) -> list[list[Hit]]:
        """Top-`depth` hits per query, limited to documents with text; `titles` marks the
        title pseudo-queries, searched over bodies alone."""
        if titles and any(titles):
            title_rows = [i for i, t in enumerate(titles) if t]
            other_rows = [i for i, t in enumerate(titles) if not t]
            _, index = self.bodies()
            found = index.search([queries[i] for i in title_rows], self.config.depth)
            hits: list[list[Hit] | None] = [None] * len(queries)
            for i, row in zip(title_rows, found, strict=True):
                hits[i] = [Hit(d, s, bm25_score=s) for d, s in row]
            others = self.ranked(
                [query_ids[i] for i in other_rows], [queries[i] for i in other_rows]
            )
            for i, row in zip(other_rows, others, strict=True):
                hits[i] = row
            return hits
        if not query_ids:
            return []
        if self.run is not None:
            return [
                [Hit(d, s) for d, s in self.run.get(q, []) if d in self.texts] for q in query_ids
            ]
        bm25, dense = self.lists(queries)
        if self.config.kind == "bm25":
            return [[Hit(d, s, bm25_score=s) for d, s in hits] for hits in bm25]
        if self.config.kind == "dense":
            return [[Hit(d, s, dense_score=s) for d, s in hits] for hits in dense]
        weight = self.config.hybrid_weight
        if weight is None:
            raise ConfigError("prepare.first_stage.hybrid_weight: not chosen yet")
        return [fuse(b, d, weight, self.config.depth) for b, d in zip(bm25, dense, strict=True)]

    def candidates(self, batch: pa.Table) -> pa.Table:
        """Candidate rows (schema CANDIDATES) for a table of queries."""
        qids, texts, splits = (batch.column(c).to_pylist() for c in ("query_id", "text", "split"))
        titles = title_queries(batch)
        rows = []
        for qid, query, split, hits, title in zip(
            qids, texts, splits, self.ranked(qids, texts, titles), titles, strict=True
        ):
            judged = self.judgments.get(qid, {})
            documents = self.texts_for(title)
            rows += [
                {
                    "query_id": qid,
                    "query": query,
                    "split": split,
                    "doc_id": hit.doc_id,
                    "rank": r,
                    "first_stage_score": hit.score,
                    "bm25_score": hit.bm25_score,
                    "dense_score": hit.dense_score,
                    "text": documents[hit.doc_id],
                    "relevance": judged.get(hit.doc_id),
                }
                for r, hit in enumerate(hits, 1)
            ]
        return schemas.table(rows, schemas.CANDIDATES)

    def groups(self, batch: pa.Table) -> pa.Table:
        """One row per query: a group, or (`skipped` set) the reason there is none."""
        qids, texts, splits = (batch.column(c).to_pylist() for c in ("query_id", "text", "split"))
        titles = title_queries(batch)
        rows = []
        for qid, query, split, hits, title in zip(
            qids, texts, splits, self.ranked(qids, texts, titles), titles, strict=True
        ):
            rng = random.Random(f"{self.config.seed}:{qid}")
            documents = self.texts_for(title)
            judged = {d: g for d, g in self.judgments.get(qid, {}).items() if d in documents}
            choice = choose_group(
                [hit.doc_id for hit in hits],
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
                    "positive_text": documents.get(choice.positive_id, ""),
                    "negative_ids": choice.negative_ids,
                    "negative_texts": [documents[d] for d in choice.negative_ids],
                    "skipped": choice.skipped or "",
                }
            )
        return schemas.table(rows, schemas.with_skipped(schemas.GROUPS))


def title_queries(batch: pa.Table) -> list[bool]:
    """Which rows of a query table are title pseudo-queries (a `kind` column says)."""
    if "kind" not in batch.column_names:
        return [False] * batch.num_rows
    return [kind == "title" for kind in batch.column("kind").to_pylist()]


def bm25_lists(root: str, config: FirstStageConfig, queries: pa.Table) -> list[dict]:
    """BM25's own top `config.depth` for a table of queries (`query_id`, `text`), with the
    first stage's BM25 settings: the lexical list a hybrid first stage fused, as a run of
    its own (rows `query_id, doc_id, rank, score`). A hybrid's candidates cannot give it:
    a BM25 hit the fusion pushed below `depth` is not among them."""
    stage = FirstStage(root, replace(config, kind="bm25"), has_run=False)
    qids, texts = queries.column("query_id").to_pylist(), queries.column("text").to_pylist()
    return [
        {"query_id": qid, "doc_id": hit.doc_id, "rank": rank, "score": hit.score}
        for qid, hits in zip(qids, stage.ranked(qids, texts), strict=True)
        for rank, hit in enumerate(hits, 1)
    ]
