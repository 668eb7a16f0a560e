"""The lines the demo prints under its table: what the user is looking at, in words.

A table of six systems and six measures does not say which LLM system won or whether that
means anything; these lines do, from the evaluation report itself (NDCG@10, paired t-tests
as the report computed them), and say that a few training steps are not a trained adapter.
"""

from __future__ import annotations

MEASURE = "ndcg@10"


def p_between(report: dict, run: str, other: str, measure: str = MEASURE) -> float | None:
    """The report's paired t-test p between two runs, whichever of them it was taken
    against (the test is symmetric); None where the report has no such test."""
    runs = report["runs"]
    for a, b in ((run, other), (other, run)):
        if b == report["baseline"] and a != b:
            return runs[a]["p_value"][measure]
        against = runs[a].get("p_value_against", {}).get(b)
        if against:
            return against[measure]
    return None


def _versus(report: dict, best: str, other: str) -> str:
    runs = report["runs"]
    value, base = runs[best]["mean"][MEASURE], runs[other]["mean"][MEASURE]
    p = p_between(report, best, other)
    significance = f", p={p:.2g}" if p is not None else ""
    return f"{value - base:+.4f} over {other} ({base:.4f}{significance})"


def training_phrase(method: str, training: dict) -> str:
    """How far one adapter got: the steps, and whether early stopping kept its start (an
    untrained adapter ranks as zero-shot does, so its rows in the table repeat zero-shot's)."""
    if training["best_epoch"] == 0:
        return (
            f"{method} {training['steps']} steps, which did not improve its dev NDCG@10 "
            f"({training['best_dev_ndcg10']:.4f} untrained), so it kept its untrained start "
            "and ranks as zero_shot does"
        )
    return f"{method} {training['steps']} steps (dev NDCG@10 {training['best_dev_ndcg10']:.4f})"


def summary_lines(report: dict, trainings: dict[str, dict], first_stage: str = "bm25") -> list[str]:
    """One or two lines: the best LLM system by NDCG@10 against the first stage (the run
    named `first_stage`) and zero-shot, and how far the adapters were trained
    (`trainings`: each method's training summary, with `steps`, `best_epoch` and
    `best_dev_ndcg10`), with where converged runs are."""
    runs = report["runs"]
    llm = [name for name in runs if name != first_stage]
    best = max(llm, key=lambda name: runs[name]["mean"][MEASURE])
    against = [o for o in (first_stage, "zero_shot") if o in runs and o != best]
    lines = [
        f"On these {report['queries']} test queries the best LLM system is {best} "
        f"(NDCG@10 {runs[best]['mean'][MEASURE]:.4f}): "
        + "; ".join(_versus(report, best, other) for other in against)
        + " (paired t-test)."
    ]
    if trainings:
        trained = "; ".join(training_phrase(m, t) for m, t in trainings.items())
        lines.append(
            f"The adapters trained for a few steps ({trained}): a look at the pipeline, not "
            "a trained reranker; converged runs and their test figures are in "
            "docs/results.md."
        )
    return lines
