"""A synthetic prepared directory where hints matter: relevant documents contain the query's
words, so a reranker that learns to surface document words that match the query wins."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow.parquet as pq

from qpeft.data import schemas
from qpeft.lm.backbone import tiny_backbone
from tests.conftest import TEMPLATE_WORDS

CONTENT = [f"w{i}" for i in range(40)]


def save_tiny_model(directory: Path, vocab_extra: list[str] = ()) -> str:
    """A tiny LLaMA in `directory`; `vocab_extra` words make another base model."""
    words = TEMPLATE_WORDS + CONTENT + list(vocab_extra)
    backbone = tiny_backbone(words, hidden_size=32, num_layers=2, num_heads=4)
    backbone.model.save_pretrained(directory, safe_serialization=True)
    backbone.tokenizer.save_pretrained(directory)
    return str(directory)


def write_prepared(
    root: Path,
    n_train: int = 32,
    n_dev: int = 8,
    n_test: int = 8,
    n_candidates: int = 5,
    seed: int = 0,
    long_queries: tuple[str, ...] = (),
) -> Path:
    """`long_queries`: query ids whose text gets 20 more words (over a small
    template.max_query_tokens)."""
    rng = random.Random(seed)
    queries, qrels, candidates, groups, corpus = [], [], [], [], []
    splits = ["train"] * n_train + ["dev"] * n_dev + ["test"] * n_test
    for i, split in enumerate(splits):
        qid = f"q{i}"
        words = rng.sample(CONTENT, 2)
        query = " ".join(words + (CONTENT[:20] if qid in long_queries else []))
        docs = []
        for j in range(n_candidates):
            fill = rng.sample([w for w in CONTENT if w not in words], 4)
            text = " ".join(rng.sample(words + fill[:2], 4) if j == 0 else fill)
            docs.append((f"{qid}-d{j}", text))
        rng.shuffle(docs)
        queries.append({"query_id": qid, "text": query, "split": split, "answers": []})
        for rank, (doc_id, text) in enumerate(docs, 1):
            relevant = doc_id.endswith("-d0")
            corpus.append({"doc_id": doc_id, "title": "", "text": text})
            qrels.append({"query_id": qid, "doc_id": doc_id, "relevance": int(relevant)})
            candidates.append(
                {
                    "query_id": qid,
                    "query": query,
                    "split": split,
                    "doc_id": doc_id,
                    "rank": rank,
                    "first_stage_score": float(-rank),
                    "text": text,
                    "relevance": int(relevant),
                }
            )
        if split != "test":
            pos = next(d for d in docs if d[0].endswith("-d0"))
            negs = [d for d in docs if d is not pos][:3]
            groups.append(
                {
                    "query_id": qid,
                    "query": query,
                    "split": split,
                    "positive_id": pos[0],
                    "positive_text": pos[1],
                    "negative_ids": [d[0] for d in negs],
                    "negative_texts": [d[1] for d in negs],
                }
            )
    for name, rows, schema in (
        ("corpus", corpus, schemas.CORPUS),
        ("queries", queries, schemas.QUERIES),
        ("qrels", qrels, schemas.QRELS),
        ("candidates", candidates, schemas.CANDIDATES),
        ("groups", groups, schemas.GROUPS),
    ):
        (root / name).mkdir(parents=True)
        pq.write_table(schemas.table(rows, schema), root / name / "part-0.parquet")
    (root / "_SUCCESS").write_text("")
    return root
