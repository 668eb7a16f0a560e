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


def test_summary_names_the_best_llm_system_and_its_margins():
    trainings = {
        "qpeft_a": {"steps": 5, "best_epoch": 1, "best_dev_ndcg10": 0.31},
        "qpeft_r": {"steps": 5, "best_epoch": 0, "best_dev_ndcg10": 0.28},
    }
    lines = summary_lines(REPORT, trainings)
    assert len(lines) == 2
    assert lines[0].startswith("On these 25 test queries the best LLM system is zero_shot_fused")
    assert "+0.0400 over bm25 (0.3000, p=0.01)" in lines[0]
    assert "+0.0100 over zero_shot (0.3300, p=0.2)" in lines[0]
    assert "qpeft_a 5 steps (dev NDCG@10 0.3100); qpeft_r 5 steps, which did not" in lines[1]
    assert "kept its untrained start and ranks as zero_shot does" in lines[1]
    assert "docs/results.md" in lines[1]


def test_summary_when_zero_shot_itself_is_best_compares_it_with_bm25_only():
    report = {**REPORT, "runs": {k: REPORT["runs"][k] for k in ("bm25", "zero_shot")}}
    (line,) = summary_lines(report, {})
    assert "best LLM system is zero_shot" in line and "over zero_shot" not in line
    assert "+0.0300 over bm25 (0.3000, p=0.04)" in line


def test_summary_names_the_first_stage_the_demo_ran():
    """A hybrid first stage is the run the LLM systems are measured against, by its name."""
    renamed = {("hybrid" if k == "bm25" else k): v for k, v in REPORT["runs"].items()}
    (line,) = summary_lines({**REPORT, "runs": renamed}, {}, first_stage="hybrid")
    assert "best LLM system is zero_shot_fused" in line
    assert "over hybrid (0.3000" in line and "bm25" not in line
