"""The demo's lines under its table name the best LLM system, its margins over the first stage and
zero-shot with the report's own p-values, and how far the adapters were trained."""

from pipelines.demo_summary import p_between, summary_lines


def run(ndcg: float, p_zero_shot: float | None, p_bm25: float | None) -> dict:
    return {
        "mean": {"ndcg@10": ndcg},
        "p_value": {} if p_zero_shot is None else {"ndcg@10": p_zero_shot},
        "p_value_against": {} if p_bm25 is None else {"bm25": {"ndcg@10": p_bm25}},
    }


REPORT = {
    "queries": 25,
    "baseline": "zero_shot",
    "also_against": ["bm25"],
    "runs": {
        "bm25": run(0.3000, 0.04, None),
        "zero_shot": run(0.3300, None, 0.04),
        "zero_shot_fused": run(0.3400, 0.2, 0.01),
        "qpeft_a": run(0.3350, 0.6, 0.03),
    },
}


def test_p_between_reads_either_direction_of_the_report():
    assert p_between(REPORT, "qpeft_a", "zero_shot") == 0.6
    assert p_between(REPORT, "qpeft_a", "bm25") == 0.03
    assert p_between(REPORT, "zero_shot", "bm25") == 0.04  # zero_shot is the baseline
    assert p_between(REPORT, "bm25", "zero_shot") == 0.04
    assert p_between(REPORT, "qpeft_a", "zero_shot_fused") is None


DEV_MOVES = {
    "qpeft_a": {"queries": 40, "trained": 0.3150, "zero_shot": 0.2900, "p_value": 0.003},
    "qpeft_r": {"queries": 40, "trained": 0.2900, "zero_shot": 0.2900, "p_value": 1.0},
}
TRAININGS = {
    "qpeft_a": {"steps": 25, "train_queries": 200, "best_epoch": 1, "best_dev_ndcg10": 0.31},
    "qpeft_r": {"steps": 25, "train_queries": 200, "best_epoch": 0, "best_dev_ndcg10": 0.28},
}


def test_summary_names_the_best_llm_system_and_each_adapters_move_from_zero_shot():
    report = {**REPORT, "runs": {**REPORT["runs"], "qpeft_r": run(0.3300, 1.0, 0.05)}}
    lines = summary_lines(report, DEV_MOVES, TRAININGS)
    assert len(lines) == 3
    assert lines[0].startswith("On these 25 test queries the best LLM system is zero_shot_fused")
    assert "+0.0400 over bm25 (0.3000, p=0.01)" in lines[0]
    assert "+0.0100 over zero_shot (0.3300, p=0.2)" in lines[0]
    assert lines[1] == (
        "qpeft_a trained 25 steps on 200 queries (dev check NDCG@10 0.3100). Against "
        "zero_shot: +0.0250 on dev (40 queries, p=0.003), +0.0050 on test (25 queries, p=0.6)."
    )
    assert lines[2].startswith("qpeft_r trained 25 steps on 200 queries; they did not improve")
    assert "kept its untrained start and ranks as zero_shot does" in lines[2]


def test_summary_when_zero_shot_itself_is_best_compares_it_with_bm25_only():
    report = {**REPORT, "runs": {k: REPORT["runs"][k] for k in ("bm25", "zero_shot")}}
    (line,) = summary_lines(report, DEV_MOVES, {})
    assert "best LLM system is zero_shot" in line and "over zero_shot" not in line
    assert "+0.0300 over bm25 (0.3000, p=0.04)" in line


def test_summary_measures_a_hybrid_first_stage_and_shows_what_it_adds_over_bm25():
    """The LLM systems are measured against the first stage the demo ran, by its name; BM25
    alone, beside it, is no LLM system and gets a line of its own."""
    hybrid = run(0.3200, 0.3, None)
    hybrid["p_value_against"] = {"bm25": {"ndcg@10": 0.02}}
    runs = {**REPORT["runs"], "hybrid": hybrid}
    runs["zero_shot_fused"] = {
        **runs["zero_shot_fused"],
        "p_value_against": {"hybrid": {"ndcg@10": 0.07}, "bm25": {"ndcg@10": 0.01}},
    }
    lines = summary_lines({**REPORT, "runs": runs}, DEV_MOVES, {}, first_stage="hybrid")
    assert "best LLM system is zero_shot_fused" in lines[0]
    assert "+0.0200 over hybrid (0.3200, p=0.07)" in lines[0] and "bm25" not in lines[0]
    assert lines[1] == "The first stage, hybrid, scores 0.3200: +0.0200 over bm25 (0.3000, p=0.02)."
