import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qpeft.data.readers import (
    DataError,
    InputFormatError,
    TextRecord,
    read_dpr_json,
    read_texts,
    read_trec_qrels,
    read_trec_run,
)

DOCS = [TextRecord("d1", "wing flow", "Aero"), TextRecord("d2", "heat transfer", "")]


def test_corpus_in_each_format_reads_the_same(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) for d in DOCS)
        + "\n\n"
    )
    tsv = tmp_path / "c.tsv"
    tsv.write_text("d1\tAero\twing flow\nd2\theat transfer\n")
    parquet = tmp_path / "c.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"id": d.id, "title": d.title, "text": d.text} for d in DOCS]),
        parquet,
    )
    for path in (jsonl, tsv, parquet):
        assert list(read_texts(path)) == DOCS, path


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        (
            "bad.jsonl",
            '{"id": "d1", "text": "ok"}\n{"id": "d2", "text": \n',
            r"bad.jsonl:2: invalid JSON",
        ),
        ("nokey.jsonl", '{"id": "d1", "body2": "x"}\n', r"nokey.jsonl:1: expected an id field"),
        ("bad.tsv", "d1\tok\nd2\ta\tb\tc\n", r"bad.tsv:2: expected 2 \(id, text\) or 3"),
        ("bad.qrels", "1 0 d1 1\n1 0 d2\n", r"bad.qrels:2: expected 4 fields"),
        ("grade.qrels", "1 0 d1 high\n", r"grade.qrels:1: relevance must be an integer"),
        (
            "bad.run",
            "1 Q0 d1 1 2.5 bm25\n1 Q0 d2 two 2.0 bm25\n",
            r"bad.run:2: rank must be an integer",
        ),
        ("corpus.csv", "x", r"unknown format '.csv'"),
    ],
)
def test_malformed_input_names_path_and_line(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_text(content)
    reader = (
        read_trec_qrels
        if name.endswith(".qrels")
        else read_trec_run
        if name.endswith(".run")
        else read_texts
    )
    with pytest.raises(InputFormatError, match=needle):
        list(reader(path))


def test_trec_qrels_and_run(tmp_path):
    qrels = tmp_path / "q.qrels"
    qrels.write_text("1 0 d1 2\n1 0 d2 -1\n")
    assert list(read_trec_qrels(qrels)) == [("1", "d1", 2), ("1", "d2", -1)]
    run = tmp_path / "r.run"
    run.write_text("1 Q0 d2 1 7.5 bm25\n1 Q0 d1 2 3 bm25\n")
    assert list(read_trec_run(run)) == [("1", "d2", 1, 7.5), ("1", "d1", 2, 3.0)]


def test_dpr_json(tmp_path):
    path = tmp_path / "nq.json"
    ctx = {
        "id": "7",
        "title": "T",
        "text": "Paris is the capital",
        "score": "12.5",
        "has_answer": True,
    }
    path.write_text(
        json.dumps([{"question": "capital of france", "answers": ["Paris"], "ctxs": [ctx]}])
    )
    (example,) = read_dpr_json(path)
    assert example.answers == ["Paris"] and example.contexts[0].has_answer
    assert example.contexts[0].score == 12.5
    ctx["has_answer"] = "yes"
    path.write_text(json.dumps([{"question": "q", "answers": [], "ctxs": [ctx]}]))
    with pytest.raises(InputFormatError, match=r"example 0.ctxs\[0\].has_answer"):
        list(read_dpr_json(path))


def test_a_byte_order_mark_is_dropped_not_kept_in_the_first_id(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_bytes("\ufeffd1\tcafé\nd2\tnaïve\n".encode())
    assert [(r.id, r.text) for r in read_texts(path)] == [("d1", "café"), ("d2", "naïve")]
    qrels = tmp_path / "q.txt"
    qrels.write_bytes(b"\xef\xbb\xbfq1 0 d1 1\n")
    assert list(read_trec_qrels(qrels)) == [("q1", "d1", 1)]


@pytest.mark.parametrize("name", ["c.jsonl", "c.tsv", "q.trec"])
def test_latin1_files_are_refused_with_path_line_and_byte(tmp_path, name):
    lines = {
        "c.jsonl": ['{"id": "d1", "text": "ok"}', '{"id": "d2", "text": "café"}'],
        "c.tsv": ["d1\tok", "d2\tcafé"],
        "q.trec": ["q1 0 d1 1", "q2 0 dé 1"],
    }[name]
    path = tmp_path / name
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    reader = read_trec_qrels if name.endswith(".trec") else read_texts
    with pytest.raises(DataError, match=rf"{name}:2: not UTF-8 text \(byte 0xe9 at column"):
        list(reader(path))


def test_latin1_dpr_json_names_the_line(tmp_path):
    path = tmp_path / "dpr.json"
    path.write_bytes('[\n{"question": "où", "answers": []}\n]'.encode("latin-1"))
    with pytest.raises(DataError, match=r"dpr.json:2: not UTF-8 text \(byte 0xf9 at column 16\)"):
        list(read_dpr_json(path))
