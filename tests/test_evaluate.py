"""Measures checked against values computed by hand, answer matching, the paired test, and
the `qpeft evaluate` report files."""

import json
import math

import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from qpeft.answers import answer_metrics, has_answer
from qpeft.data import schemas
from qpeft.metrics import evaluate, paired_t_test, ranked

# Query 1: relevant a (grade 2), c and z (grade 1; z never retrieved).
QRELS = {"1": {"a": 2, "b": 0, "c": 1, "z": 1}, "2": {"x": 1, "y": 0}, "3": {"w": 1}}
# The run ranks b, a, c for query 1, puts x second for query 2 and misses query 3.
RUN = {"1": {"a": 0.5, "b": 0.9, "c": 0.1}, "2": {"y": 2.0, "x": 1.0}}


def test_measures_match_hand_computed_values():
    values = evaluate(
        QRELS, RUN, ("ndcg@10", "mrr@10", "mrr@1", "map", "recall@2", "p@2", "ndcg@1")
    )
    q1 = values["1"]
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    ideal = 2 + 1 / math.log2(3) + 1 / math.log2(4)
    assert q1["ndcg@10"] == pytest.approx(dcg / ideal)
    assert q1["ndcg@1"] == 0.0
    assert q1["mrr@10"] == pytest.approx(1 / 2) and q1["mrr@1"] == 0.0
    assert q1["map"] == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert q1["recall@2"] == pytest.approx(1 / 3) and q1["p@2"] == pytest.approx(1 / 2)
    assert values["2"]["mrr@10"] == pytest.approx(1 / 2)
    assert values["2"]["ndcg@10"] == pytest.approx(1 / math.log2(3))
    # A judged query the run misses counts, with 0 everywhere (trec_eval -c).
    assert set(values["3"].values()) == {0.0}


def test_ties_break_like_trec_eval_and_mrr_cut_uses_the_same_order():
    assert ranked({"a": 1.0, "c": 1.0, "b": 2.0}) == ["b", "c", "a"]
    # With all scores tied, trec_eval ranks c, b, a: the relevant a is third.
    qrels = {"1": {"a": 1}}
    tied = {"1": {"a": 0.0, "b": 0.0, "c": 0.0}}
    values = evaluate(qrels, tied, ("mrr@2", "mrr@3", "mrr"))["1"]
    assert values == {"mrr@2": 0.0, "mrr@3": pytest.approx(1 / 3), "mrr": pytest.approx(1 / 3)}


def test_unknown_measures_are_named():
    with pytest.raises(ValueError, match="unknown measure 'bleu'"):
        evaluate(QRELS, RUN, ("bleu",))
    with pytest.raises(ValueError, match="needs a cutoff"):
        evaluate(QRELS, RUN, ("recall",))


def test_answer_matching_follows_dpr_tokenisation():
    assert has_answer("It was built by Nikola Tesla's lab.", ["nikola tesla"])
    assert has_answer("Born in 1856, in Smiljan", ["1856"])
    assert not has_answer("Born in 18560", ["1856"])  # whole tokens only
    assert not has_answer("anything", ["", "   "])


def test_hit_rate_and_answer_recall_by_hand():
    texts = ["no", "the answer is Paris", "nothing", "Paris again"]
    values = answer_metrics(texts, ["Paris"], ks=(1, 2, 4))
    assert values == {
        "hit@1": 0.0,
        "answer_recall@1": 0.0,
        "hit@2": 1.0,
        "answer_recall@2": 0.5,
        "hit@4": 1.0,
        "answer_recall@4": 1.0,
    }
    assert answer_metrics(["no"], ["Paris"], ks=(5,)) == {"hit@5": 0.0, "answer_recall@5": 0.0}


def test_paired_t_test_by_hand():
    # Differences 1, 2, 3: t = 2 / (1 / sqrt(3)) with 2 degrees of freedom, p = 0.0742.
    assert paired_t_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]) == pytest.approx(0.0742, abs=1e-4)
    assert paired_t_test([0.5, 0.5], [0.5, 0.5]) == 1.0


def write_prepared_qa(root):
    """Queries 1-3 (test) and 4 (train), with answers; qrels from QRELS."""
    docs = {
        "a": "paris is the capital",
        "b": "berlin",
        "c": "the capital paris",
        "x": "rome",
        "y": "madrid",
        "z": "x",
        "w": "y",
    }
    tables = {
        "corpus": (
            [{"doc_id": d, "title": "", "text": t} for d, t in docs.items()],
            schemas.CORPUS,
        ),
        "queries": (
            [
                {"query_id": q, "text": f"question {q}", "split": s, "answers": a}
                for q, s, a in [
                    ("1", "test", ["Paris"]),
                    ("2", "test", ["Rome"]),
                    ("3", "test", ["none"]),
                    ("4", "train", ["x"]),
                ]
            ],
            schemas.QUERIES,
        ),
        "qrels": (
            [
                {"query_id": q, "doc_id": d, "relevance": g}
                for q, docs_ in {**QRELS, "4": {"x": 1}}.items()
                for d, g in docs_.items()
            ],
            schemas.QRELS,
        ),
    }
    for name, (rows, schema) in tables.items():
        (root / name).mkdir(parents=True)
        pq.write_table(schemas.table(rows, schema), root / name / "part-0.parquet")
    (root / "_SUCCESS").write_text("")


def write_trec(path, run):
    lines = [
        f"{q} Q0 {d} {r} {s} tag"
        for q, docs in run.items()
        for r, (d, s) in enumerate(docs.items(), 1)
    ]
    path.write_text("\n".join(lines) + "\n")


def test_evaluate_writes_json_markdown_tsv_and_png(tmp_path, capsys):
    write_prepared_qa(tmp_path / "prepared")
    write_trec(tmp_path / "base.trec", RUN)
    better = {"1": {"a": 0.9, "c": 0.8, "b": 0.1}, "2": {"x": 2.0, "y": 1.0}, "3": {"w": 1.0}}
    write_trec(tmp_path / "better.trec", better)
    out = tmp_path / "report"
    args = [
        f"evaluate.prepared_dir={tmp_path / 'prepared'}",
        f"evaluate.runs={json.dumps({'base': str(tmp_path / 'base.trec')})}",
        f"evaluate.runs.better={tmp_path / 'better.trec'}",
        "evaluate.queries=judged",
        "evaluate.measures=[mrr@10, p@2]",
        "evaluate.answer_ks=[1, 2]",
        "evaluate.also_against=[better]",
        f"evaluate.output_dir={out}",
    ]
    assert main(["evaluate", *(x for a in args for x in ("--set", a))]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["queries"] == 3 and report["baseline"] == "base"
    base, good = report["runs"]["base"], report["runs"]["better"]
    assert base["queries_missing"] == ["3"] and good["queries_missing"] == []
    assert base["mean"]["mrr@10"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert good["mean"]["mrr@10"] == pytest.approx(1.0)
    # Answers: query 1's "Paris" is in a and c; query 2's "Rome" is x; query 3's never.
    assert base["mean"]["hit@1"] == pytest.approx(0.0)
    assert good["mean"]["hit@1"] == pytest.approx(2 / 3)
    assert good["mean"]["answer_recall@1"] == pytest.approx((1 / 2 + 1) / 3)
    assert good["p_value"]["mrr@10"] == pytest.approx(paired_t_test([1, 1, 1], [0.5, 0.5, 0]))
    # Also against `better`: the base run's p-values against it, the same test reversed.
    assert base["p_value_against"]["better"]["mrr@10"] == pytest.approx(good["p_value"]["mrr@10"])
    assert good["p_value_against"] == {}
    table = (out / "report.md").read_text()
    assert "| base (baseline) |" in table and "| better | 1.0000 |" in table
    assert "| p vs better |" in table
    assert len((out / "per_query.tsv").read_text().splitlines()) == 1 + 2 * 3
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| better |" in capsys.readouterr().out


def test_evaluate_errors_name_the_field(tmp_path, capsys):
    assert (
        main(["evaluate", "--set", "evaluate.measures=[bleu]", "--set", "evaluate.runs.a=x"]) == 2
    )
    assert "evaluate.measures[0]: unknown measure 'bleu'" in capsys.readouterr().err
    write_prepared_qa(tmp_path / "prepared")
    args = ["--set", f"evaluate.prepared_dir={tmp_path / 'prepared'}"]
    assert main(["evaluate", *args, "--set", f"evaluate.runs.a={tmp_path / 'nope.trec'}"]) == 2
    assert "nope.trec: no such run file or directory" in capsys.readouterr().err
    bad = tmp_path / "bad.trec"
    bad.write_text("1 Q0 a 1 0.5 t\n1 Q0 a 2 0.4 t\n")
    assert main(["evaluate", *args, "--set", f"evaluate.runs.a={bad}"]) == 2
    assert "document a is ranked twice for query 1" in capsys.readouterr().err


def test_evaluate_records_an_adapters_figures_in_its_model_card(tiny, tmp_path, capsys):
    import yaml

    from qpeft.loading.checkpoint import CARD_NAME, save_adapter
    from qpeft.loading.model_card import EVALUATIONS_NAME
    from tests.conftest import build_model

    write_prepared_qa(tmp_path / "prepared")
    adapter = save_adapter(build_model(tiny, "qpeft_a"), tmp_path / "adapter")
    reranked = tmp_path / "rerank"  # what `qpeft rerank` leaves, reduced to what evaluate reads
    reranked.mkdir()
    (reranked / "counts.json").write_text(json.dumps({"adapter_dir": str(adapter)}))
    write_trec(reranked / "run.trec", RUN)
    write_trec(reranked / "run_fused.trec", {"1": {"a": 0.9, "b": 0.5, "c": 0.1}})
    write_trec(tmp_path / "bm25.trec", RUN)  # not from an adapter: no card to update
    out = tmp_path / "report"
    args = [
        f"evaluate.prepared_dir={tmp_path / 'prepared'}",
        f"evaluate.runs.bm25={tmp_path / 'bm25.trec'}",
        f"evaluate.runs.qpeft_a={reranked / 'run.trec'}",
        f"evaluate.runs.qpeft_a_fused={reranked / 'run_fused.trec'}",
        "evaluate.answers=off",
        "evaluate.measures=[ndcg@10, p@2]",
        f"evaluate.output_dir={out}",
        "evaluate.model_cards=true",
    ]
    for _ in range(2):  # a second evaluation replaces the figures rather than adding rows
        assert main(["evaluate", *(x for a in args for x in ("--set", a))]) == 0
    assert "model cards of 1 adapter folder(s)" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    recorded = json.loads((adapter / EVALUATIONS_NAME).read_text())
    assert [(e["run"], e["fused"], e["split"]) for e in recorded] == [
        ("qpeft_a", False, "test"),
        ("qpeft_a_fused", True, "test"),
    ]
    ndcg = report["runs"]["qpeft_a_fused"]["mean"]["ndcg@10"]
    assert recorded[1]["mean"]["ndcg@10"] == ndcg and recorded[1]["queries"] == 2
    _, header, body = (adapter / CARD_NAME).read_text().split("---\n", 2)
    results = yaml.safe_load(header)["model-index"][0]["results"]
    assert results[1]["metrics"] == [
        {"type": "ndcg_at_10", "value": round(ndcg, 4), "name": "ndcg@10"}
    ]
    assert results[1]["dataset"]["split"] == "test"
    assert f"| qpeft_a_fused | {ndcg:.4f} |" in body
