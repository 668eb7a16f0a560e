"""Streaming readers for the file formats users bring, with errors that name `path:line`.

Corpora and queries: JSONL, TSV and parquet. Judgments and first-stage results: TREC qrels
and TREC run files. Open-domain QA: DPR/UPR-style JSON (`question`, `answers`, `ctxs`), where
a context's relevance is its `has_answer`. Every reader yields records one at a time, so a
corpus is never held in memory, and stops at the first malformed record with its location.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

ID_FIELDS = ("id", "_id", "doc_id", "docid", "query_id", "qid")
TEXT_FIELDS = ("text", "contents", "body", "query", "question")


class DataError(ValueError):
    """Input data cannot be used as given; the message says where and why."""


class InputFormatError(DataError):
    """A record does not have the expected shape; the message starts with `path:line`."""


@dataclass
class TextRecord:
    """A document or a query: id, text and (documents only) an optional title."""

    id: str
    text: str
    title: str = ""


@dataclass
class QAContext:
    id: str
    title: str
    text: str
    score: float | None
    has_answer: bool


@dataclass
class QAExample:
    question: str
    answers: list[str]
    contexts: list[QAContext]


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".tsv", ".txt"):
        return "tsv"
    if suffix == ".parquet":
        return "parquet"
    raise InputFormatError(f"{path}: unknown format {suffix!r} (expected .jsonl, .tsv or .parquet)")


def _record_from_mapping(row: dict, where: str) -> TextRecord:
    doc_id = next((row[f] for f in ID_FIELDS if row.get(f) is not None), None)
    text = next((row[f] for f in TEXT_FIELDS if row.get(f) is not None), None)
    if doc_id is None or text is None:
        raise InputFormatError(
            f"{where}: expected an id field (one of {', '.join(ID_FIELDS)}) and a text field "
            f"(one of {', '.join(TEXT_FIELDS)}), got keys {sorted(row)}"
        )
    if not isinstance(text, str):
        raise InputFormatError(f"{where}: text must be a string, got {type(text).__name__}")
    return TextRecord(str(doc_id), text, str(row.get("title") or ""))


UTF8_BOM = b"\xef\xbb\xbf"


def _not_utf8(path: Path, line_number: int, line: bytes, column: int) -> InputFormatError:
    return InputFormatError(
        f"{path}:{line_number}: not UTF-8 text (byte 0x{line[column : column + 1].hex()} at "
        f"column {column + 1}); re-save the file as UTF-8"
    )


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, one line at a time. A byte-order mark is
    dropped (it would end up inside the first id); other encodings are refused with the
    line, as guessing latin-1 vs cp1252 silently would change texts."""
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            if line_number == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM) :]
            try:
                yield line_number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, line_number, raw, err.start) from None


def read_texts(path: str | Path) -> Iterator[TextRecord]:
    """Documents or queries from JSONL (`{"id", "text", "title"?}`), TSV (`id<TAB>text` or
    `id<TAB>title<TAB>text`, no header) or parquet (same columns as JSONL)."""
    path = Path(path)
    fmt = _format_of(path)
    if fmt == "parquet":
        row_number = 0
        for batch in pq.ParquetFile(path).iter_batches():
            for row in batch.to_pylist():
                row_number += 1
                yield _record_from_mapping(row, f"{path}: row {row_number}")
        return
    if fmt == "jsonl":
        for line_number, line in text_lines(path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputFormatError(f"{path}:{line_number}: invalid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise InputFormatError(f"{path}:{line_number}: expected a JSON object")
            yield _record_from_mapping(row, f"{path}:{line_number}")
        return
    for line_number, line in text_lines(path):
        fields = next(csv.reader([line.rstrip("\r\n")], delimiter="\t", quoting=csv.QUOTE_NONE))
        if not fields:
            continue
        if len(fields) == 2:
            yield TextRecord(fields[0], fields[1])
        elif len(fields) == 3:
            yield TextRecord(fields[0], fields[2], fields[1])
        else:
            raise InputFormatError(
                f"{path}:{line_number}: expected 2 (id, text) or 3 (id, title, text) "
                f"tab-separated fields, got {len(fields)}"
            )


def _trec_lines(path: Path, layout: str) -> Iterator[tuple[str, list[str]]]:
    """(`path:line`, fields) of each non-blank whitespace-separated line, checked to have
    as many fields as `layout` names."""
    expected = len(layout.split())
    for line_number, line in text_lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != expected:
            raise InputFormatError(
                f"{path}:{line_number}: expected {expected} fields '{layout}', got {len(fields)}"
            )
        yield f"{path}:{line_number}", fields


def read_trec_qrels(path: str | Path) -> Iterator[tuple[str, str, int]]:
    """(query_id, doc_id, relevance) from `qid iteration docid relevance` lines."""
    for where, fields in _trec_lines(Path(path), "qid iter docid rel"):
        try:
            relevance = int(fields[3])
        except ValueError:
            raise InputFormatError(
                f"{where}: relevance must be an integer, got {fields[3]!r}"
            ) from None
        yield fields[0], fields[2], relevance


def read_trec_run(path: str | Path) -> Iterator[tuple[str, str, int, float]]:
    """(query_id, doc_id, rank, score) from `qid Q0 docid rank score tag` lines."""
    for where, fields in _trec_lines(Path(path), "qid Q0 docid rank score tag"):
        try:
            rank, score = int(fields[3]), float(fields[4])
        except ValueError:
            raise InputFormatError(
                f"{where}: rank must be an integer and score a number, "
                f"got {fields[3]!r} and {fields[4]!r}"
            ) from None
        yield fields[0], fields[2], rank, score


def _context(raw: object, where: str) -> QAContext:
    if not isinstance(raw, dict) or "id" not in raw or "text" not in raw:
        raise InputFormatError(f"{where}: expected an object with 'id' and 'text'")
    has_answer = raw.get("has_answer", False)
    if not isinstance(has_answer, bool):
        raise InputFormatError(f"{where}.has_answer: expected true or false, got {has_answer!r}")
    score = raw.get("score")
    return QAContext(
        id=str(raw["id"]),
        title=str(raw.get("title") or ""),
        text=str(raw["text"]),
        score=float(score) if score is not None else None,
        has_answer=has_answer,
    )


def read_dpr_json(path: str | Path) -> Iterator[QAExample]:
    """Examples of a DPR/UPR retrieval file: a JSON list of `{question, answers, ctxs}`."""
    path = Path(path)
    raw = path.read_bytes().removeprefix(UTF8_BOM)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        line_start = raw.rfind(b"\n", 0, err.start) + 1
        line_number = raw.count(b"\n", 0, err.start) + 1
        raise _not_utf8(path, line_number, raw[line_start:], err.start - line_start) from None
    except json.JSONDecodeError as err:
        raise InputFormatError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise InputFormatError(f"{path}: expected a JSON list of examples")
    for i, item in enumerate(data):
        where = f"{path}: example {i}"
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            raise InputFormatError(f"{where}: expected an object with a string 'question'")
        answers = item.get("answers", [])
        ctxs = item.get("ctxs", [])
        if not isinstance(answers, list) or not isinstance(ctxs, list):
            raise InputFormatError(f"{where}: 'answers' and 'ctxs' must be lists")
        contexts = [_context(c, f"{where}.ctxs[{j}]") for j, c in enumerate(ctxs)]
        yield QAExample(item["question"], [str(a) for a in answers], contexts)
