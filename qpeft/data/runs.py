"""Run files: ranking scored candidates, writing TREC runs, and reading any run back.

A run is read from a TREC run file (`qid Q0 docid rank score tag`), from the output
directory of `qpeft rerank` (its parquet run, only once `_SUCCESS` says it is complete), or
from a directory of parquet files with `query_id`, `doc_id` and `score` columns.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads

from qpeft import storage
from qpeft.artifacts.rerank_run import RerankRun
from qpeft.data.readers import DataError, read_trec_run

Run = dict[str, dict[str, float]]

# In a `qpeft rerank` output folder: the run interpolated with the first stage.


def rank_candidates(rows: list[dict]) -> list[dict]:
    """Sort scored rows and add `rank` per query: score descending, ties by first-stage
    rank, then document id."""
    rows = sorted(
        rows, key=lambda r: (r["query_id"], -r["score"], r["first_stage_rank"], r["doc_id"])
    )
    rank, previous = 0, None
    for row in rows:
        rank = rank + 1 if row["query_id"] == previous else 1
        previous = row["query_id"]
        row["rank"] = rank
    return rows


def write_trec_run(path: Path, rows: list[dict], tag: str) -> None:
    """Write ranked rows (`query_id, doc_id, rank, score`) as a TREC run, atomically.
    Scores are written in full precision, so the file ranks exactly as the parquet run."""
    partial = path.with_name(path.name + ".partial")
    ordered = sorted(rows, key=lambda r: (r["query_id"], r["rank"]))
    with partial.open("w", encoding="utf-8") as handle:
        for r in ordered:
            handle.write(
                f"{r['query_id']} Q0 {r['doc_id']} {r['rank']} {float(r['score'])!r} {tag}\n"
            )
    os.replace(partial, path)


def run_from_rows(rows: list[dict]) -> Run:
    run: Run = {}
    for r in rows:
        run.setdefault(r["query_id"], {})[r["doc_id"]] = float(r["score"])
    return run


def read_run(path: str | Path) -> Run:
    """A run from a TREC file, a `qpeft rerank` output directory or a parquet directory,
    local or at a cloud URI (read from a downloaded copy)."""
    if storage.is_uri(path):
        try:
            local = storage.local_copy(path)
        except FileNotFoundError:
            raise DataError(f"{path}: no such run file or directory") from None
        try:
            return read_run(local)
        except DataError as err:
            raise DataError(f"{path} (downloaded to {local}): {err}") from None
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such run file or directory")
    if path.is_file():
        run: Run = {}
        for query_id, doc_id, _, score in read_trec_run(path):
            if doc_id in run.setdefault(query_id, {}):
                raise DataError(f"{path}: document {doc_id} is ranked twice for query {query_id}")
            run[query_id][doc_id] = score
        return run
    if (path / RerankRun.RUN).is_dir() or (path / RerankRun.PARTIAL).is_dir():
        if not RerankRun(path).is_complete():
            raise DataError(f"{path}: the rerank run is incomplete (no _SUCCESS); resume it first")
        path = path / RerankRun.RUN
    try:
        table = pads.dataset(str(path), format="parquet").to_table(
            columns=["query_id", "doc_id", "score"]
        )
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a parquet run with query_id, doc_id, score ({err})") from None
    return run_from_rows(table.to_pylist())
