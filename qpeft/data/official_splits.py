"""A collection's own train/dev/test splits, read before any query is written.

Collections such as BEIR's NFCorpus ship their splits: one ir_datasets id per split that
share a corpus (`beir/nfcorpus/train`, `/dev`, `/test`), one qrels file per split, or a
file that names each query's split. `split_assignment` turns any of these into one mapping
`query_id -> split`, checked so that a query is never in two splits and no split is empty;
queries that no split names are left out and counted. Random fractions by hash
(`qpeft.data.splits`) remain for collections without splits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qpeft.data import irds
from qpeft.data.readers import DataError, read_trec_qrels
from qpeft.data.sources import SourceConfig, parts
from qpeft.data.splits import SPLITS


@dataclass
class SplitAssignment:
    """Each query's split and where that came from (a dataset id or a file per split)."""

    split_of: dict[str, str] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # split -> id or file
    kind: str = "hash"

    def counts(self) -> dict[str, int]:
        by_split = {name: 0 for name in self.origin}
        for split in self.split_of.values():
            by_split[split] = by_split.get(split, 0) + 1
        return by_split


def _check_split_names(names: Iterable[str], key: str) -> None:
    for name in names:
        if name not in SPLITS:
            raise DataError(f"{key}: unknown split {name!r} (expected one of {list(SPLITS)})")


def _assign(assignment: SplitAssignment, split: str, query_ids: Iterable[str], where: str) -> None:
    """Add `split`'s queries; a query already in another split is an error naming both."""
    seen = 0
    for query_id in query_ids:
        earlier = assignment.split_of.get(query_id)
        if earlier is not None and earlier != split:
            raise DataError(
                f"{where}: query {query_id!r} is in split {split!r} and also in split "
                f"{earlier!r} ({assignment.origin[earlier]}); a query belongs to one split"
            )
        assignment.split_of[query_id] = split
        seen += 1
    if seen == 0:
        raise DataError(f"{where}: split {split!r} has no judged query")


def from_irds(split_ids: dict[str, str], seed: str | None) -> SplitAssignment:
    """Splits from one ir_datasets id per split: a split's queries are those it judges."""
    _check_split_names(split_ids, "prepare.source.irds_splits")
    assignment = SplitAssignment(origin=dict(split_ids), kind="irds_splits")
    for split, dataset_id in split_ids.items():
        dataset = load_split(dataset_id, split, seed)
        judged = dict.fromkeys(q for q, _, _ in irds.iter_qrels(dataset))
        _assign(assignment, split, judged, f"prepare.source.irds_splits.{split} ({dataset_id})")
    return assignment


def load_split(dataset_id: str, split: str, seed: str | None):
    """The ir_datasets dataset of one split, with an error naming the split if it is unknown."""
    try:
        dataset = irds.load(dataset_id, seed)
    except KeyError:
        raise DataError(
            f"prepare.source.irds_splits.{split}: {dataset_id!r} is not an ir_datasets id"
        ) from None
    if not dataset.has_qrels():
        raise DataError(
            f"prepare.source.irds_splits.{split}: {dataset_id!r} has no qrels, so it cannot "
            "say which queries are in the split"
        )
    return dataset


def from_qrels_files(
    qrels_files: dict[str, str], query_ids: set[str], queries_file: str
) -> SplitAssignment:
    """Splits from one TREC qrels file per split; qrels naming queries that the queries
    file lacks are an error (they would silently drop out of every metric)."""
    _check_split_names(qrels_files, "prepare.source.qrels_splits")
    assignment = SplitAssignment(origin=dict(qrels_files), kind="qrels_splits")
    for split, path in qrels_files.items():
        judged = dict.fromkeys(q for q, _, _ in read_trec_qrels(path))
        unknown = [q for q in judged if q not in query_ids]
        if unknown:
            raise DataError(
                f"{path}: split {split!r} judges {len(unknown)} queries absent from "
                f"{queries_file} (e.g. {', '.join(unknown[:3])})"
            )
        _assign(assignment, split, judged, f"{path} (split {split!r})")
    return assignment


def read_split_file(path: str) -> Iterator[tuple[str, str, int]]:
    """(query_id, split, line) from a TSV of `query_id<TAB>split`; a header line
    `query_id<TAB>split` is allowed."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2:
                raise DataError(f"{path}:{line_no}: expected 'query_id<TAB>split'")
            query_id, split = fields[0].strip(), fields[1].strip()
            if line_no == 1 and (query_id, split) == ("query_id", "split"):
                continue
            if split not in SPLITS:
                raise DataError(
                    f"{path}:{line_no}: unknown split {split!r} (expected one of {list(SPLITS)})"
                )
            yield query_id, split, line_no


def from_split_file(path: str, query_ids: set[str], queries_file: str) -> SplitAssignment:
    """Splits from a `query_id<TAB>split` file."""
    rows = list(read_split_file(path))
    unknown = [q for q, _, _ in rows if q not in query_ids]
    if unknown:
        raise DataError(
            f"{path}: {len(unknown)} query ids absent from {queries_file} "
            f"(e.g. {', '.join(unknown[:3])})"
        )
    assignment = SplitAssignment(
        origin={s: path for s in dict.fromkeys(s for _, s, _ in rows)}, kind="split_file"
    )
    for query_id, split, line_no in rows:
        _assign(assignment, split, [query_id], f"{path}:{line_no}")
    return assignment


def split_assignment(source: SourceConfig) -> SplitAssignment | None:
    """The source's own splits, checked; None where it has none (random fractions apply)."""
    if source.irds_splits:
        return from_irds(source.irds_splits, source.irds_seed)
    if not source.has_own_splits:
        return None
    query_ids = {row["query_id"] for part in parts(source, "queries") for row in part()}
    if source.qrels_splits:
        return from_qrels_files(source.qrels_splits, query_ids, source.queries)
    return from_split_file(source.split_file, query_ids, source.queries)
