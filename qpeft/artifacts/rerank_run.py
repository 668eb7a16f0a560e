"""The folder `qpeft rerank` writes for one run, and how evaluate reads it."""

from __future__ import annotations

import json
from typing import ClassVar

from qpeft import storage
from qpeft.artifacts.folder import OutputFolder


class RerankRun(OutputFolder):
    """Finished shards in `run.partial/` while scoring; then `run/` (parquet), `run.trec`,
    the fused run and its `fusion.json` when asked for, `counts.json`, and `_SUCCESS` last.
    `progress.json` records every invocation."""

    step = "rerank"
    marker = "_SUCCESS"
    overwrite_key = "rerank.overwrite"
    RUN: ClassVar[str] = "run"
    PARTIAL: ClassVar[str] = "run.partial"
    TREC: ClassVar[str] = "run.trec"
    FUSED_TREC: ClassVar[str] = "run_fused.trec"
    FUSION: ClassVar[str] = "fusion.json"
    COUNTS: ClassVar[str] = "counts.json"
    PROGRESS: ClassVar[str] = "progress.json"

    def counts(self) -> dict:
        return json.loads(storage.read_text(self.path(self.COUNTS)))

    def write_counts(self, counts: dict) -> None:
        storage.write_text(self.path(self.COUNTS), json.dumps(counts, indent=2) + "\n")

    def adapter_dir(self) -> str | None:
        """The adapter the run was scored with (None: zero-shot or the first stage)."""
        if not storage.exists(self.path(self.COUNTS)):
            return None
        return self.counts().get("adapter_dir")
