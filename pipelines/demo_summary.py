"""The lines the demo prints under its table: what the user is looking at, in words.

A table of six systems and six measures does not say which LLM system won or whether that
means anything; these lines do, from the evaluation reports themselves (NDCG@10, paired
t-tests as the reports computed them): what the first stage adds over BM25, what the best
LLM system adds over the first stage, and how far training moved each adapter from
zero-shot on dev and on test.
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


def _difference(report: dict, run: str, other: str) -> tuple[float, float, str]:
    """`run`'s NDCG@10 minus `other`'s, `other`'s own, and ", p=..." (empty without a test)."""
    runs = report["runs"]
    value, base = runs[run]["mean"][MEASURE], runs[other]["mean"][MEASURE]
    p = p_between(report, run, other)
    return value - base, base, f", p={p:.2g}" if p is not None else ""


def _versus(report: dict, best: str, other: str) -> str:
    delta, base, significance = _difference(report, best, other)
    return f"{delta:+.4f} over {other} ({base:.4f}{significance})"


def training_phrase(method: str, training: dict) -> str:
    """How far one adapter got: its steps and training queries, and whether early stopping
    kept its start (an untrained adapter ranks as zero-shot does)."""
    done = f"{method} trained {training['steps']} steps on {training['train_queries']} queries"
    if training["best_epoch"] == 0:
        return (
            f"{done}; they did not improve its dev check (NDCG@10 "
            f"{training['best_dev_ndcg10']:.4f} untrained), so it kept its untrained start "
            "and ranks as zero_shot does"
        )
    return f"{done} (dev check NDCG@10 {training['best_dev_ndcg10']:.4f})"


def on_test(report: dict, method: str) -> str:
    """An adapter's NDCG@10 against zero-shot's in the test report, with its p."""
    delta, _, significance = _difference(report, method, "zero_shot")
    return f"{delta:+.4f} on test ({report['queries']} queries{significance})"


def on_dev(move: dict) -> str:
    """An adapter's dev check against zero-shot's (the check at its step 0)."""
    delta = move["trained"] - move["zero_shot"]
    return f"{delta:+.4f} on dev ({move['queries']} queries, p={move['p_value']:.2g})"


def summary_lines(
    report: dict, dev_moves: dict[str, dict], trainings: dict[str, dict], first_stage: str = "bm25"
) -> list[str]:
    """The best LLM system on test by NDCG@10 against the first stage (the run named
    `first_stage`) and zero-shot; the first stage against BM25 alone where both ran; and
    how far each adapter (`trainings`: each method's training summary, with `steps`,
    `train_queries`, `best_epoch` and `best_dev_ndcg10`) moved from zero-shot on dev
    (`dev_moves`: per method, `queries`, `trained` and `zero_shot` means and `p_value`) and
    on test. p-values are paired t-tests, on test the report's own."""
    runs = report["runs"]
    llm = [name for name in runs if name not in (first_stage, "bm25")]
    best = max(llm, key=lambda name: runs[name]["mean"][MEASURE])
    against = [o for o in (first_stage, "zero_shot") if o in runs and o != best]
    lines = [
        f"On these {report['queries']} test queries the best LLM system is {best} "
        f"(NDCG@10 {runs[best]['mean'][MEASURE]:.4f}): "
        + "; ".join(_versus(report, best, other) for other in against)
        + " (paired t-test)."
    ]
    if "bm25" in runs and first_stage != "bm25":
        lines.append(
            f"The first stage, {first_stage}, scores {runs[first_stage]['mean'][MEASURE]:.4f}: "
            f"{_versus(report, first_stage, 'bm25')}."
        )
    for method, training in trainings.items():
        lines.append(
            f"{training_phrase(method, training)}. Against zero_shot: "
            f"{on_dev(dev_moves[method])}, {on_test(report, method)}."
        )
    return lines
