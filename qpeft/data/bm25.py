"""BM25 first stage with bm25s (sparse-matrix BM25, numpy backend, PyStemmer stemming).

Chosen over rank_bm25 (pure Python, scores every document per query) and Pyserini (needs a
JVM): bm25s indexes Cranfield in well under a second and needs no network or Java.
"""

from __future__ import annotations

from collections.abc import Sequence

import bm25s
import Stemmer


class BM25Index:
    """An in-memory BM25 index over (doc_id, text) pairs."""

    def __init__(
        self, doc_ids: Sequence[str], texts: Sequence[str], k1: float = 0.9, b: float = 0.4
    ):
        # k1=0.9, b=0.4: the Anserini/Pyserini defaults most IR baselines report.
        self.doc_ids = list(doc_ids)
        self.stemmer = Stemmer.Stemmer("english")
        self.retriever = bm25s.BM25(k1=k1, b=b)
        tokens = bm25s.tokenize(
            list(texts), stopwords="en", stemmer=self.stemmer, show_progress=False
        )
        self.retriever.index(tokens, show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Top-k (doc_id, score) per query, best first; documents with score 0 are dropped."""
        k = min(k, len(self.doc_ids))
        tokens = bm25s.tokenize(
            list(queries), stopwords="en", stemmer=self.stemmer, show_progress=False
        )
        indices, scores = self.retriever.retrieve(tokens, k=k, show_progress=False)
        return [
            [(self.doc_ids[i], float(s)) for i, s in zip(row_i, row_s, strict=True) if s > 0]
            for row_i, row_s in zip(indices, scores, strict=True)
        ]
