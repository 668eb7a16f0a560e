"""The folder `qpeft prepare` writes, and how every later step reads it."""

from __future__ import annotations

import json
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from qpeft import storage
from qpeft.artifacts.folder import OutputFolder
from qpeft.config import ConfigError
from qpeft.metrics import Qrels


class PreparedData(OutputFolder):
    """One parquet table per name, each complete once its folder has `_SUCCESS`; the
    counts; and the top-level `_SUCCESS`, written last."""

    step = "prepare"
    marker = "_SUCCESS"
    overwrite_key = "prepare.overwrite"

    CORPUS: ClassVar[str] = "corpus"
    QUERIES: ClassVar[str] = "queries"
    QRELS: ClassVar[str] = "qrels"
    RUN: ClassVar[str] = "run"  # the source's own first-stage run, when it has one
    CANDIDATES: ClassVar[str] = "candidates"
    GROUPS: ClassVar[str] = "groups"
    # Queries drafted from the corpus (`prepare.pseudo_queries`), kept ones and the others.
    PSEUDO_QUERIES: ClassVar[str] = "pseudo_queries"
    COUNTS: ClassVar[str] = "counts.json"

    @staticmethod
    def skipped_name(table: str) -> str:
        """What a table left out, and why (`{reason: count}`)."""
        return f"{table}_skipped.json"

    def require_complete(self, key: str) -> PreparedData:
        """This folder, or a ConfigError naming the config key that pointed at it."""
        if not self.is_complete():
            raise ConfigError(f"{key}: {self.root} is not a complete `qpeft prepare` output")
        return self

    def has(self, table: str) -> bool:
        return storage.exists(self.path(table))

    def table_done(self, table: str) -> bool:
        return storage.exists(self.path(table, self.marker))

    def table(self, name: str, columns: list[str] | None = None, filter=None) -> pa.Table:
        return storage.read_parquet(self.path(name), columns, filter)

    def counts(self) -> dict:
        return json.loads(storage.read_text(self.path(self.COUNTS)))

    def query_ids(self, split: str | None = None) -> list[str]:
        """Query ids of a split (or all), the kept pseudo-queries' included."""
        condition = pc.field("split") == split if split else None
        ids = self.table(self.QUERIES, ["query_id"], condition)["query_id"].to_pylist()
        ids += [r["query_id"] for r in self.pseudo_queries(split)]
        return sorted(ids)

    def pseudo_queries(self, split: str | None = None) -> list[dict]:
        """The kept pseudo-queries (query_id, text, kind, doc_id, split), if there are any."""
        if not self.table_done(self.PSEUDO_QUERIES):
            return []
        condition = pc.field("skipped") == ""
        if split:
            condition = condition & (pc.field("split") == split)
        columns = ["query_id", "text", "kind", "doc_id", "split"]
        return self.table(self.PSEUDO_QUERIES, columns, condition).to_pylist()

    def qrels(self, query_ids: list[str] | None = None) -> Qrels:
        """Judgments as {query_id: {doc_id: relevance}}, optionally of some queries only. A
        kept pseudo-query is judged relevant (1) to its source document alone."""
        condition = None
        if query_ids is not None:
            condition = pc.field("query_id").isin(pa.array(query_ids, pa.string()))
        rows = self.table(self.QRELS, ["query_id", "doc_id", "relevance"], condition).to_pylist()
        wanted = set(query_ids) if query_ids is not None else None
        rows += [
            {"query_id": r["query_id"], "doc_id": r["doc_id"], "relevance": 1}
            for r in self.pseudo_queries()
            if wanted is None or r["query_id"] in wanted
        ]
        qrels: Qrels = {}
        for row in rows:
            qrels.setdefault(row["query_id"], {})[row["doc_id"]] = row["relevance"]
        return qrels
