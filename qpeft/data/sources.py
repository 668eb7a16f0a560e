"""Where the data comes from: ir_datasets ids, local files or DPR/UPR QA JSON.

A source is described by `SourceConfig` and read as *parts*: zero-argument callables that
each stream the records of one file (or one dataset), as dicts with the columns of
`qpeft.data.schemas`. Parts let a distributed reader run one task per file while every
error still names its file and line.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from qpeft.data import irds
from qpeft.data.readers import DataError, read_dpr_json, read_texts, read_trec_qrels, read_trec_run

Part = Callable[[], Iterator[dict]]


@dataclass
class SourceConfig:
    """One data source: an ir_datasets id (or one per split), local files (globs allowed),
    or a DPR JSON file.

    A collection's own splits: `irds_splits` maps split -> ir_datasets id (the ids share one
    corpus, as `beir/nfcorpus/train`, `/dev`, `/test` do); with local files, `qrels_splits`
    maps split -> qrels file, or `split_file` names each query's split (`query_id<TAB>split`).
    Without any of them `prepare.splits` draws random fractions."""

    irds: str | None = None
    irds_splits: dict[str, str] | None = None
    irds_seed: str | None = None
    corpus: str | None = None
    queries: str | None = None
    qrels: str | None = None
    qrels_splits: dict[str, str] | None = None
    split_file: str | None = None
    run: str | None = None
    dpr: str | None = None

    def validate(self) -> None:
        from qpeft.config import ConfigError

        kinds = [k for k in ("irds", "irds_splits", "corpus", "dpr") if getattr(self, k)]
        if len(kinds) != 1:
            raise ConfigError(
                "source: give exactly one of source.irds, source.irds_splits, source.corpus "
                f"(with source.queries) or source.dpr, got {kinds or 'none'}"
            )
        if (self.qrels_splits or self.split_file) and not self.corpus:
            raise ConfigError(
                "source.qrels_splits / source.split_file: only with local files (source.corpus)"
            )
        if self.qrels_splits and (self.qrels or self.split_file):
            raise ConfigError(
                "source.qrels_splits: give the judgments either per split or in source.qrels "
                "(with source.split_file), not both"
            )

    @property
    def splits_from(self) -> str:
        """Where queries' splits come from: the source's own, or `fractions` by hash."""
        for key in ("irds_splits", "qrels_splits", "split_file"):
            if getattr(self, key):
                return key
        return "fractions"

    @property
    def has_own_splits(self) -> bool:
        return self.splits_from != "fractions"


def full_text(title: str, text: str, separator: str | None = "\n") -> str:
    """The text a reranker reads: title and body joined by `separator` (None: body only;
    a document with no body keeps its title)."""
    title, text = title.strip(), text.strip()
    if separator is None:
        return text or title
    return f"{title}{separator}{text}" if title and text else title or text


def _files(pattern: str) -> list[str]:
    matches = sorted(glob.glob(pattern))
    if not matches:
        raise DataError(f"{pattern}: no such file")
    return matches


def _texts(path: str, kind: str) -> Iterator[dict]:
    for record in read_texts(path):
        if kind == "corpus":
            yield {"doc_id": record.id, "title": record.title, "text": record.text}
        else:
            yield {"query_id": record.id, "text": record.text, "answers": []}


def _irds(dataset_id: str, seed: str | None, kind: str) -> Iterator[dict]:
    dataset = irds.load(dataset_id, seed)
    if kind == "corpus":
        for doc in irds.offline(dataset.docs_iter()):
            title = getattr(doc, "title", "") or ""
            text = getattr(doc, "text", None)
            text = text if text is not None else doc.default_text()
            yield {"doc_id": doc.doc_id, "title": title, "text": text}
    elif kind == "queries":
        for query_id, text in irds.iter_queries(dataset):
            yield {"query_id": query_id, "text": text, "answers": []}
    elif kind == "qrels":
        for query_id, doc_id, relevance in irds.iter_qrels(dataset):
            yield {"query_id": query_id, "doc_id": doc_id, "relevance": relevance}
    elif kind == "run":
        ranks: dict[str, int] = {}
        for row in irds.offline(dataset.scoreddocs_iter()):
            ranks[row.query_id] = ranks.get(row.query_id, 0) + 1
            yield {
                "query_id": row.query_id,
                "doc_id": row.doc_id,
                "rank": ranks[row.query_id],
                "score": float(row.score),
            }


def _dpr(path: str, kind: str) -> Iterator[dict]:
    stem = Path(path).stem
    seen: set[str] = set()
    for i, example in enumerate(read_dpr_json(path)):
        query_id = f"{stem}-{i}"
        if kind == "queries":
            yield {"query_id": query_id, "text": example.question, "answers": example.answers}
            continue
        for rank, ctx in enumerate(example.contexts, 1):
            if kind == "corpus" and ctx.id not in seen:
                seen.add(ctx.id)
                yield {"doc_id": ctx.id, "title": ctx.title, "text": ctx.text}
            elif kind == "qrels":
                yield {"query_id": query_id, "doc_id": ctx.id, "relevance": int(ctx.has_answer)}
            elif kind == "run":
                score = ctx.score if ctx.score is not None else -float(rank)
                yield {"query_id": query_id, "doc_id": ctx.id, "rank": rank, "score": score}


def _qrels(path: str) -> Iterator[dict]:
    for query_id, doc_id, relevance in read_trec_qrels(path):
        yield {"query_id": query_id, "doc_id": doc_id, "relevance": relevance}


def _run(path: str) -> Iterator[dict]:
    for query_id, doc_id, rank, score in read_trec_run(path):
        yield {"query_id": query_id, "doc_id": doc_id, "rank": rank, "score": score}


def parts(source: SourceConfig, kind: str) -> list[Part]:
    """Readers for `kind` (corpus, queries, qrels or run) of `source`; [] where it has none."""
    if source.irds_splits:
        ids = list(source.irds_splits.values())
        if kind == "run" and source.run:
            return [partial(_run, f) for f in _files(source.run)]
        if kind == "corpus":  # the splits share one corpus
            ids = ids[:1]
        if kind == "run":
            ids = [i for i in ids if irds.load(i, source.irds_seed).has_scoreddocs()]
        return [partial(_irds, i, source.irds_seed, kind) for i in ids]
    if source.irds:
        if kind == "run" and source.run:
            return [partial(_run, f) for f in _files(source.run)]
        if kind == "run" and not irds.load(source.irds, source.irds_seed).has_scoreddocs():
            return []
        return [partial(_irds, source.irds, source.irds_seed, kind)]
    if source.dpr:
        return [partial(_dpr, f, kind) for f in _files(source.dpr)]
    if kind == "qrels" and source.qrels_splits:
        return [partial(_qrels, f) for f in source.qrels_splits.values()]
    pattern = {
        "corpus": source.corpus,
        "queries": source.queries,
        "qrels": source.qrels,
        "run": source.run,
    }[kind]
    if not pattern:
        return []
    if kind in ("corpus", "queries"):
        return [partial(_texts, f, kind) for f in _files(pattern)]
    return [partial(_qrels if kind == "qrels" else _run, f) for f in _files(pattern)]
