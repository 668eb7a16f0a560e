"""Data unlike Cranfield, end to end: long and short queries and documents, blank and
duplicate lines, Unicode, a BOM, qrels naming unknown documents. prepare -> train -> rerank
-> evaluate through the CLI, with the counts checked at each step."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from pipelines.cli import main
from tests.conftest import TINY_TEMPLATE
from tests.synthetic import CONTENT, save_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

UNICODE = ["café", "naïve", "東京", "Ωmega", "emoji🙂"]
N_QUERIES, LONG_QUERY_WORDS, LONG_DOC_WORDS = 40, 400, 1000


def write_collection(root: Path) -> dict:
    """Local JSONL/TREC files as users have them; returns their paths and what they hold."""
    rng = random.Random(7)
    root.mkdir(parents=True)
    docs, queries, qrels = [], [], []
    for i in range(N_QUERIES):
        topic = rng.sample(CONTENT, 3)
        length = LONG_QUERY_WORDS if i % 5 == 0 else rng.choice([1, 3, 8])
        words = (topic * length)[:length] + ([rng.choice(UNICODE)] if i % 3 == 0 else [])
        queries.append({"id": f"q{i}", "text": " ".join(words)})
        for j in range(2):
            size = LONG_DOC_WORDS if (i + j) % 7 == 0 else rng.choice([2, 20, 60])
            filler = [rng.choice(CONTENT) for _ in range(size)]
            body = topic + filler if j == 0 else filler
            docs.append(
                {"id": f"d{i}-{j}", "title": rng.choice(["", "Tïtle"]), "text": " ".join(body)}
            )
            if j == 0:
                qrels.append(f"q{i} 0 d{i}-0 1")
    docs.append({"id": "d-empty", "text": ""})
    qrels += ["q1 0 d999 1", "q2 0 d998 2"]  # judgments naming documents nobody has
    corpus_lines = [json.dumps(d, ensure_ascii=False) for d in docs]
    corpus_lines.insert(5, "")  # a blank line
    corpus_lines.append(corpus_lines[3])  # a duplicate line
    (root / "corpus.jsonl").write_bytes(
        b"\xef\xbb\xbf" + "\n".join(corpus_lines).encode("utf-8") + b"\n"
    )
    query_lines = [json.dumps(q, ensure_ascii=False) for q in queries]
    query_lines.insert(2, "   ")  # a blank line: not a record
    query_lines.insert(4, json.dumps({"id": "q-blank", "text": "  "}))  # a blank query
    (root / "queries.jsonl").write_text("\n".join(query_lines) + "\n", encoding="utf-8")
    (root / "qrels.txt").write_text("\n".join(qrels) + "\n")
    long_ids = {q["id"] for i, q in enumerate(queries) if i % 5 == 0}
    return {
        "source": {
            k: str(root / f)
            for k, f in (
                ("corpus", "corpus.jsonl"),
                ("queries", "queries.jsonl"),
                ("qrels", "qrels.txt"),
            )
        },
        "long_ids": long_ids,
        "docs": len(docs),
    }


def sets(pairs: dict) -> list[str]:
    return [x for key, value in pairs.items() for x in ("--set", f"{key}={value}")]


def test_unlike_data_prepare_train_rerank_evaluate(ray_session, tmp_path, capsys):
    data = write_collection(tmp_path / "files")
    model = save_tiny_model(tmp_path / "tiny")
    template = {**TINY_TEMPLATE, "max_query_tokens": 16, "max_doc_tokens": 48}
    common = {"model.name": model, "template": json.dumps(template), "ray.num_cpus": 2}
    prepared = tmp_path / "prepared"

    # prepare: reads the BOM'd, blank- and duplicate-lined files; warns about unknown docs.
    args = {
        **common,
        "prepare.output_dir": prepared,
        "prepare.source": json.dumps(data["source"]),
        "prepare.missing_docs": "warn",
        "prepare.first_stage.depth": 6,
        "prepare.first_stage.negatives": 2,
    }
    assert main(["prepare", *sets(args)]) == 0, capsys.readouterr().err
    counts = json.loads((prepared / "counts.json").read_text())
    # Every line is a row (the duplicate too, counted as a duplicate id); blank lines are not.
    assert counts["documents"] == data["docs"] + 1 and counts["empty_documents"] == 1
    assert counts["duplicate_document_ids"] == 1
    assert counts["queries"] == N_QUERIES and counts["skipped"]["queries"] == {"empty_query": 1}
    assert counts["references"]["qrels"]["missing_documents"] == 2
    lengths = counts["query_lengths"]
    assert lengths["queries_over_limit"] == len(data["long_ids"])
    assert lengths["longest_query_tokens"] >= LONG_QUERY_WORDS
    doc_ids = set(pads.dataset(str(prepared / "corpus")).to_table()["doc_id"].to_pylist())
    assert "d0-0" in doc_ids  # the BOM did not end up inside the first id
    queries = pads.dataset(str(prepared / "queries")).to_table().to_pylist()
    split_of = {q["query_id"]: q["split"] for q in queries}
    assert any(q["text"].endswith(tuple(UNICODE)) for q in queries)

    # train: long queries truncated to 16 tokens, 1000-word documents cut, micro-batches.
    args = {
        **common,
        "adapter.method": "qpeft_a",
        "data.prepared_dir": prepared,
        "train.max_steps": 2,
        "train.queries_per_batch": 4,
        "train.dev_depth": 4,
        "train.micro_batch_tokens": 256,
        "scaling.num_workers": 2,
        "run.name": "unlike",
        "run.storage_path": tmp_path / "train",
    }
    assert main(["train", *sets(args)]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "train" / "unlike" / "metrics.json").read_text())
    train_dev_long = [q for q in data["long_ids"] if split_of[q] in ("train", "dev")]
    assert summary["query_check"]["queries_truncated"] == len(train_dev_long)
    assert summary["query_check"]["queries_skipped"] == 0
    assert summary["steps"] == 2 and summary["history"][-1]["query_tokens_cut"] >= 0

    # rerank the test queries with the adapter: every candidate exactly once.
    test_long = [q for q in data["long_ids"] if split_of[q] == "test"]
    args = {
        "model.name": model,
        "rerank.prepared_dir": prepared,
        "rerank.method": "qpeft_a",
        "rerank.adapter_dir": summary["adapter"],
        "rerank.output_dir": tmp_path / "rerank",
        "rerank.depth": 6,
        "ray.num_cpus": 2,
    }
    assert main(["rerank", *sets(args)]) == 0, capsys.readouterr().err
    run_counts = json.loads((tmp_path / "rerank" / "qpeft_a" / "counts.json").read_text())
    assert run_counts["pairs_written"] == run_counts["pairs_expected"] > 0
    assert run_counts["missing"] == run_counts["duplicated"] == 0
    assert run_counts["query_check"]["queries_truncated"] == len(test_long)

    # Zero-shot with long_queries=skip leaves the long test queries out, and says so.
    skip = {
        **args,
        "rerank.method": "zero_shot",
        "rerank.adapter_dir": "null",
        "template": json.dumps({**template, "long_queries": "skip"}),
    }
    assert main(["rerank", *sets(skip)]) == 0, capsys.readouterr().err
    skipped = json.loads((tmp_path / "rerank" / "zero_shot" / "counts.json").read_text())
    assert skipped["query_check"]["queries_skipped"] == len(test_long)
    assert skipped["queries"] == run_counts["queries"] - len(test_long)

    # evaluate both runs against the prepared qrels of the test split.
    runs = {
        "adapter": str(tmp_path / "rerank" / "qpeft_a"),
        "zero_shot_skip": str(tmp_path / "rerank" / "zero_shot"),
    }
    args = {
        "evaluate.prepared_dir": prepared,
        "evaluate.runs": json.dumps(runs),
        "evaluate.output_dir": tmp_path / "report",
    }
    assert main(["evaluate", *sets(args)]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["queries"] == run_counts["queries"]
    assert set(report["runs"]["zero_shot_skip"]["queries_missing"]) == set(test_long)
