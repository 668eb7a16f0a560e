"""IR measures through pytrec_eval (the reference implementation of trec_eval), and the
paired t-test that IR papers report against a baseline.

Measure names are the ones papers print (`ndcg@10`, `mrr@10`, `map`, `recall@100`, `p@5`);
`PYTREC_MEASURES` maps them to trec_eval's. Queries follow `trec_eval -c`: every judged query
of the evaluation set counts, and a query a run does not rank scores 0 on every measure.
"""

from __future__ import annotations

import math
import re

import pytrec_eval
from scipy import stats

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]

DEFAULT_MEASURES = (
    "ndcg@10",
    "ndcg@20",
    "mrr@10",
    "map",
    "recall@10",
    "recall@20",
    "recall@100",
    "p@5",
    "p@10",
)
_MEASURE = re.compile(r"^(ndcg|mrr|map|recall|p)(?:@(\d+))?$")


def clip_qrels(qrels: Qrels) -> Qrels:
    """Negative grades (e.g. Cranfield's -1, 'no interest') count as non-relevant."""
    return {q: {d: max(0, g) for d, g in docs.items()} for q, docs in qrels.items()}


def parse_measure(name: str) -> tuple[str, int | None]:
    """`recall@100` -> ("recall", 100); raises ValueError naming what is accepted."""
    match = _MEASURE.match(name.lower())
    if not match:
        raise ValueError(
            f"unknown measure {name!r} (accepted: ndcg@k, mrr@k, map, map@k, recall@k, p@k, "
            "ndcg, mrr)"
        )
    family, cutoff = match.group(1), match.group(2)
    if family in ("recall", "p") and cutoff is None:
        raise ValueError(f"measure {name!r} needs a cutoff, e.g. {family}@10")
    return family, int(cutoff) if cutoff else None


def ranked(docs: dict[str, float], depth: int | None = None) -> list[str]:
    """Document ids in trec_eval's order: score descending, ties by document id descending."""
    order = [d for d, _ in sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]
    return order if depth is None else order[:depth]


def truncate(run: Run, depth: int) -> Run:
    return {q: {d: docs[d] for d in ranked(docs, depth)} for q, docs in run.items()}


def _pytrec_request(family: str, cutoff: int | None) -> tuple[str, str]:
    """(measure to ask pytrec_eval for, key of its result)."""
    names = {
        "ndcg": ("ndcg_cut", "ndcg"),
        "map": ("map_cut", "map"),
        "recall": ("recall", ""),
        "p": ("P", ""),
        "mrr": ("", "recip_rank"),
    }
    with_cutoff, without = names[family]
    if family == "mrr" or cutoff is None:
        return without, without
    return f"{with_cutoff}.{cutoff}", f"{with_cutoff}_{cutoff}"


def evaluate(
    qrels: Qrels, run: Run, measures: tuple[str, ...] = DEFAULT_MEASURES
) -> dict[str, dict[str, float]]:
    """Per-query values of `measures` for every query in `qrels` (0 where `run` lacks it).

    MRR@k is trec_eval's reciprocal rank on the run cut to its top k (trec_eval's
    `recip_rank` has no cutoff).
    """
    judged = clip_qrels(qrels)
    results: dict[str, dict[str, float]] = {q: {} for q in judged}
    for name in measures:
        family, cutoff = parse_measure(name)
        request, key = _pytrec_request(family, cutoff)
        source = truncate(run, cutoff) if family == "mrr" and cutoff else run
        ranked_queries = {q: docs for q, docs in source.items() if q in judged and docs}
        evaluated = (
            pytrec_eval.RelevanceEvaluator(judged, {request}).evaluate(ranked_queries)
            if ranked_queries
            else {}
        )
        for query in judged:
            results[query][name] = evaluated.get(query, {}).get(key, 0.0)
    return results


def ndcg10_by_query(qrels: Qrels, run: Run) -> dict[str, float]:
    """NDCG@10 of each judged query the run ranks."""
    ranked_judged = {q: docs for q, docs in qrels.items() if run.get(q)}
    return {q: v["ndcg@10"] for q, v in evaluate(ranked_judged, run, ("ndcg@10",)).items()}


def mean_ndcg10(qrels: Qrels, run: Run) -> float:
    """Mean NDCG@10 over the judged queries the run ranks (dev selection during training)."""
    return mean(list(ndcg10_by_query(qrels, run).values()))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def paired_t_test(values: list[float], baseline: list[float]) -> float:
    """Two-sided p-value of a paired t-test; 1.0 where the runs never differ (t undefined)."""
    if len(values) != len(baseline):
        raise ValueError(f"paired test needs equal lengths, got {len(values)} and {len(baseline)}")
    if len(values) < 2 or all(a == b for a, b in zip(values, baseline, strict=True)):
        return 1.0
    p = float(stats.ttest_rel(values, baseline).pvalue)
    return 1.0 if math.isnan(p) else p
