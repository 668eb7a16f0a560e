"""IR measures through pytrec_eval (the reference implementation of trec_eval)."""

from __future__ import annotations

import pytrec_eval

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def clip_qrels(qrels: Qrels) -> Qrels:
    """Negative grades (e.g. Cranfield's -1, 'no interest') count as non-relevant."""
    return {q: {d: max(0, g) for d, g in docs.items()} for q, docs in qrels.items()}


def per_query(qrels: Qrels, run: Run, measures: set[str]) -> dict[str, dict[str, float]]:
    """pytrec_eval results for the queries that are both judged and in the run."""
    judged = {q: d for q, d in clip_qrels(qrels).items() if q in run}
    if not judged:
        return {}
    return pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(run)


def mean_ndcg10(qrels: Qrels, run: Run) -> float:
    results = per_query(qrels, run, {"ndcg_cut.10"})
    return sum(r["ndcg_cut_10"] for r in results.values()) / max(1, len(results))
