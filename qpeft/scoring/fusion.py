"""Interpolating the LM's scores with the first stage's, with a weight chosen on dev.

fused(q, d) = w * norm_q(lm(q, d)) + (1 - w) * norm_q(first_stage(q, d)), where norm_q
min-max scales each system's scores over query q's candidate list. Min-max per query is
rank-safe (it keeps each system's order within the query) and puts a log-likelihood and a
BM25 score on the same [0, 1] scale; w = 1 is the LM alone, w = 0 the first stage alone.
Linear interpolation with the first stage is the usual way a reranker's scores are combined
with BM25's.

The weight is chosen on dev queries only: by training, for each saved adapter, and by
`qpeft rerank` with `rerank.fusion: choose` on a dev split for a zero-shot run.
"""

from __future__ import annotations

from collections.abc import Iterable

from qpeft.metrics import Qrels, Run, mean_ndcg10

# Candidate weights: steps of 0.05 from the first stage alone to the LM alone.
WEIGHTS = tuple(round(i * 0.05, 2) for i in range(21))


def normalised(scores: dict[str, float]) -> dict[str, float]:
    """Min-max scale one query's scores to [0, 1] (all equal: all 0.5)."""
    low, high = min(scores.values()), max(scores.values())
    if high == low:
        return dict.fromkeys(scores, 0.5)
    return {doc: (value - low) / (high - low) for doc, value in scores.items()}


def fuse(lm: Run, first_stage: Run, weight: float) -> Run:
    """The fused run over the (query, document) pairs both runs scored."""
    fused: Run = {}
    for query, lm_scores in lm.items():
        stage = {d: s for d, s in first_stage.get(query, {}).items() if d in lm_scores}
        if not stage:
            continue
        shared = {d: lm_scores[d] for d in stage}
        a, b = normalised(shared), normalised(stage)
        fused[query] = {d: weight * a[d] + (1 - weight) * b[d] for d in shared}
    return fused


def choose_weight(
    lm: Run, first_stage: Run, qrels: Qrels, weights: Iterable[float] = WEIGHTS
) -> tuple[float, dict[float, float]]:
    """The weight with the best mean NDCG@10 on these (dev) queries, and the whole curve.
    Ties go to the larger weight: the LM's own ranking, the thing being trained."""
    curve = {w: mean_ndcg10(qrels, fuse(lm, first_stage, w)) for w in weights}
    best = max(curve, key=lambda w: (curve[w], w))
    return best, curve
