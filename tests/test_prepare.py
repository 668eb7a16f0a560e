"""`qpeft prepare` on Ray Data: Cranfield offline, local files, bad references, resume."""

import json
import re

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from pipelines.prepare import (
    PrepareConfig,
    PrepareError,
    mark_left_out,
    prepare,
    queries_over_caps,
)
from qpeft.config import ConfigError, from_dict
from qpeft.data import schemas

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def config(out, **section):
    return from_dict(
        PrepareConfig, {"prepare": {"output_dir": str(out), **section}, "ray": {"num_cpus": 2}}
    )


def table(root, name):
    return pads.dataset(str(root / name), format="parquet").to_table()


def test_cranfield_offline(ray_session, tmp_path):
    out = tmp_path / "cranfield"
    # BM25 alone: the hybrid default runs on Cranfield in tests/test_demo.py.
    first_stage = {"depth": 20, "kind": "bm25"}
    counts = prepare(config(out, source={"irds": "cranfield"}, first_stage=first_stage))
    assert (counts["documents"], counts["queries"], counts["qrels"]) == (1400, 225, 1837)
    assert counts["queries_with_candidates"] == 225 and counts["queries_without_candidates"] == 0
    assert counts["candidates_per_query"]["min"] == 20
    # Every train/dev query is either a group or counted as skipped with its reason.
    train_dev = counts["queries_by_split"]["train"] + counts["queries_by_split"]["dev"]
    assert counts["groups"] + sum(counts["skipped"]["groups"].values()) == train_dev
    for name, schema in (
        ("corpus", schemas.CORPUS),
        ("queries", schemas.QUERIES),
        ("qrels", schemas.QRELS),
        ("candidates", schemas.CANDIDATES),
        ("groups", schemas.GROUPS),
    ):
        written = table(out, name)
        # Parquet drops not-null flags and renames list items; names and types must match.
        assert written.column_names == schema.names, name
        assert written.cast(schema).num_rows == written.num_rows
    groups = table(out, "groups").to_pylist()
    qrels = {(r["query_id"], r["doc_id"]): r["relevance"] for r in table(out, "qrels").to_pylist()}
    for g in groups:
        assert qrels[(g["query_id"], g["positive_id"])] >= 1
        assert all(qrels.get((g["query_id"], d), 0) < 1 for d in g["negative_ids"])
    assert json.loads((out / "counts.json").read_text())["documents"] == 1400
    # One file per block of prepare.block_rows (2,000) documents, not Ray Data's 200 splits.
    assert len(list((out / "corpus").glob("*.parquet"))) == 1
    assert len(list((out / "queries").glob("*.parquet"))) == 1
    assert (out / "_SUCCESS").exists()

    # Resume: a complete directory is left alone; a missing step is redone alone.
    corpus_mtime = (out / "corpus").stat().st_mtime_ns
    for name in ("groups", "_SUCCESS", "counts.json"):
        path = out / name
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink()
    again = prepare(config(out, source={"irds": "cranfield"}, first_stage=first_stage))
    assert again["groups"] == counts["groups"]
    assert (out / "corpus").stat().st_mtime_ns == corpus_mtime
    with pytest.raises(PrepareError, match="another configuration"):
        prepare(config(out, source={"irds": "cranfield"}, first_stage={**first_stage, "depth": 30}))


def write_files(tmp_path, missing_doc=False):
    corpus = tmp_path / "corpus.jsonl"
    docs = {
        "d1": "wing flow separation",
        "d2": "heat transfer in a boundary layer",
        "d3": "bread and yeast",
        "d4": "",
        "d5": "wing stall at high angle of attack",
    }
    corpus.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))
    queries = tmp_path / "queries.tsv"
    queries.write_text("q1\twhat causes wing stall\nq2\theat transfer\nq3\t   \n")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 d5 2\nq1 0 d1 1\nq2 0 d2 1\n" + ("q2 0 d99 1\n" if missing_doc else ""))
    run = tmp_path / "run.txt"
    run.write_text(
        "q1 Q0 d1 1 9.0 x\nq1 Q0 d3 2 5.0 x\nq1 Q0 d5 3 4.0 x\nq2 Q0 d2 1 3.0 x\nq2 Q0 d4 2 2.0 x\n"
    )
    return {"corpus": str(corpus), "queries": str(queries), "qrels": str(qrels), "run": str(run)}


def test_local_files_missing_documents_fail_then_warn(ray_session, tmp_path):
    source = write_files(tmp_path, missing_doc=True)
    out = tmp_path / "files"
    splits = {"train": 1.0, "dev": 0.0, "test": 0.0}
    with pytest.raises(PrepareError, match=r"qrels: 1 of 4 rows name documents missing .*d99"):
        prepare(config(out, source=source, splits=splits))
    assert not (out / "_SUCCESS").exists()
    counts = prepare(config(out, source=source, splits=splits, missing_docs="warn"))
    assert counts["references"]["qrels"]["missing_documents"] == 1
    assert counts["skipped"]["queries"] == {"empty_query": 1}  # q3 is blank
    assert counts["queries"] == 2 and counts["empty_documents"] == 1
    cands = table(out, "candidates").to_pylist()
    assert sorted((c["query_id"], c["doc_id"], c["rank"]) for c in cands) == [
        ("q1", "d1", 1),
        ("q1", "d3", 2),
        ("q1", "d5", 3),
        ("q2", "d2", 1),
        ("q2", "d4", 2),
    ]
    groups = {g["query_id"]: g for g in table(out, "groups").to_pylist()}
    assert groups["q1"]["positive_id"] == "d5" and groups["q1"]["negative_ids"] == ["d3"]
    assert groups["q2"]["positive_id"] == "d2" and groups["q2"]["negative_ids"] == ["d4"]


def test_malformed_file_stops_with_path_and_line(ray_session, tmp_path, capsys):
    from pipelines.cli import main

    (tmp_path / "c.jsonl").write_text('{"id": "d1", "text": "ok"}\n{"id": "d2", "text": \n')
    (tmp_path / "q.tsv").write_text("q1\thello\n")
    out = tmp_path / "out"
    args = [
        "--set",
        f"prepare.output_dir={out}",
        "--set",
        f"prepare.source.corpus={tmp_path / 'c.jsonl'}",
        "--set",
        f"prepare.source.queries={tmp_path / 'q.tsv'}",
    ]
    assert main(["prepare", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"data error: {tmp_path / 'c.jsonl'}:2: invalid JSON (Expecting value)"
    assert not (out / "corpus").exists() and not (out / "_SUCCESS").exists()
    # A latin-1 file (as spreadsheets export) is named with its line, not a traceback.
    (tmp_path / "c.jsonl").write_bytes('{"id": "d1", "text": "café"}\n'.encode("latin-1"))
    assert main(["prepare", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"data error: {tmp_path / 'c.jsonl'}:1: not UTF-8 text (byte 0xe9")
    assert not (out / "corpus").exists() and not (out / "_SUCCESS").exists()


def test_dpr_json_end_to_end(ray_session, tmp_path):
    ctxs = [
        {
            "id": "c1",
            "title": "Paris",
            "text": "Paris is the capital of France",
            "score": 9.0,
            "has_answer": True,
        },
        {"id": "c2", "title": "Lyon", "text": "Lyon is a city", "score": 5.0, "has_answer": False},
        {
            "id": "c3",
            "title": "Nice",
            "text": "Nice is by the sea",
            "score": 4.0,
            "has_answer": False,
        },
    ]
    data = [{"question": f"question {i}", "answers": ["Paris"], "ctxs": ctxs} for i in range(4)]
    path = tmp_path / "nq-dev.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "dpr"
    counts = prepare(
        config(
            out,
            source={"dpr": str(path)},
            splits={"train": 1.0, "dev": 0.0, "test": 0.0},
            first_stage={"negatives": 2},
        )
    )
    assert (counts["documents"], counts["queries"], counts["qrels"]) == (3, 4, 12)
    assert counts["candidates"] == 12 and counts["groups"] == 4
    group = table(out, "groups").to_pylist()[0]
    assert group["positive_id"] == "c1" and sorted(group["negative_ids"]) == ["c2", "c3"]
    assert table(out, "queries").column("answers").to_pylist()[0] == ["Paris"]


def test_official_splits_from_local_qrels_files_through_the_cli(ray_session, tmp_path, capsys):
    """A collection's own splits (one qrels file per split), graded judgments kept, titles
    joined by the configured separator, counts per split; then a split file that leaves a
    split without judged queries fails and leaves nothing that looks complete."""
    from pipelines.cli import main

    docs = [
        {"_id": "d1", "title": "Statins", "text": "statins and breast cancer survival"},
        {"_id": "d2", "title": "Fiber", "text": "dietary fiber and colon health"},
        {"_id": "d3", "title": "Coffee", "text": "coffee and liver enzymes"},
        {"_id": "d4", "title": "Soy", "text": "soy and breast cancer risk"},
    ]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "queries.tsv").write_text(
        "t1\tstatins cancer\nt2\tfiber colon\nv1\tcoffee liver\ne1\tsoy cancer\nx1\tunsplit\n"
    )
    (tmp_path / "train.qrels").write_text("t1 0 d1 2\nt1 0 d4 1\nt2 0 d2 1\n")
    (tmp_path / "dev.qrels").write_text("v1 0 d3 2\n")
    (tmp_path / "test.qrels").write_text("e1 0 d4 1\n")
    out = tmp_path / "out"
    args = ["--set", f"prepare.output_dir={out}"]
    for key in ("corpus", "queries"):
        args += [
            "--set",
            f"prepare.source.{key}={tmp_path / key}.{'jsonl' if key == 'corpus' else 'tsv'}",
        ]
    for split in ("train", "dev", "test"):
        args += ["--set", f"prepare.source.qrels_splits.{split}={tmp_path / split}.qrels"]
    args += ["--set", "prepare.first_stage.title_separator=' | '"]
    assert main(["prepare", *args]) == 0
    counts = json.loads((out / "counts.json").read_text())
    assert counts["splits_from"] == "qrels_splits"
    assert counts["queries_by_split"] == {"train": 2, "dev": 1, "test": 1}
    assert counts["judged_queries_by_split"] == {"train": 2, "dev": 1, "test": 1}
    assert counts["skipped"]["queries"] == {"empty_query": 0, "no_split": 1}  # x1
    grades = {(r["query_id"], r["doc_id"]): r["relevance"] for r in table(out, "qrels").to_pylist()}
    assert grades[("t1", "d1")] == 2 and grades[("t1", "d4")] == 1
    texts = {c["doc_id"]: c["text"] for c in table(out, "candidates").to_pylist()}
    assert texts["d1"] == "Statins | statins and breast cancer survival"

    (tmp_path / "splits.tsv").write_text("t1\ttrain\nt2\ttrain\nv1\ttrain\nx1\tdev\n")
    bad = tmp_path / "bad"
    args = [
        "--set", f"prepare.output_dir={bad}",
        "--set", f"prepare.source.corpus={tmp_path / 'corpus.jsonl'}",
        "--set", f"prepare.source.queries={tmp_path / 'queries.tsv'}",
        "--set", f"prepare.source.qrels={tmp_path / 'train.qrels'}",
        "--set", f"prepare.source.split_file={tmp_path / 'splits.tsv'}",
    ]  # fmt: skip
    assert main(["prepare", *args]) == 2
    assert "split 'dev' of the source's splits has no judged query" in capsys.readouterr().err
    assert not (bad / "_SUCCESS").exists() and not (bad / "counts.json").exists()


def test_max_queries_keeps_a_nested_sample_of_judged_queries_per_split():
    rows = [{"query_id": f"t{i}", "split": "train", "skipped": ""} for i in range(20)]
    rows += [{"query_id": f"d{i}", "split": "dev", "skipped": ""} for i in range(5)]
    rows.append({"query_id": "blank", "split": "train", "skipped": "empty_query"})
    judged = {f"t{i}" for i in range(1, 20)} | {f"d{i}" for i in range(5)}  # t0 unjudged
    small = queries_over_caps(rows, {"train": 5}, judged, seed=13)
    large = queries_over_caps(rows, {"train": 10}, judged, seed=13)
    kept_small = {f"t{i}" for i in range(20)} - small
    kept_large = {f"t{i}" for i in range(20)} - large
    assert len(kept_small) == 5 and len(kept_large) == 10
    assert kept_small < kept_large and "t0" not in kept_large  # nested, judged only
    assert not any(q.startswith("d") for q in large) and "blank" not in large  # uncapped, skipped
    batch = pa.table(
        {"query_id": ["t0", "blank", sorted(kept_small)[0]], "skipped": ["", "empty_query", ""]}
    )
    marked = mark_left_out(batch, small).column("skipped").to_pylist()
    assert marked == ["beyond_max_queries", "empty_query", ""]


@pytest.mark.parametrize(
    ("caps", "message"),
    [
        ({"valid": 3}, "prepare.max_queries: unknown split 'valid'"),
        ({"train": 0}, "prepare.max_queries.train: must be a positive number of queries"),
    ],
)
def test_max_queries_refuses_unknown_splits_and_empty_caps(caps, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_dict(
            PrepareConfig, {"prepare": {"source": {"irds": "cranfield"}, "max_queries": caps}}
        )
