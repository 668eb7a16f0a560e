"""Hybrid first stage: BM25's and the dense retriever's lists fused into one.

Convex combination of min-max normalised scores, fused = w * dense + (1 - w) * bm25, where
a document missing from one list gets 0 on that side (the bottom of its normalised scale)
and ties go to the other list's order.
Chosen over reciprocal rank fusion because it keeps how far apart scores are, and it
matched or beat RRF in Bruch et al. (2023, "An Analysis of Fusion Functions for Hybrid
Retrieval") once w is tuned; w is chosen on dev queries (`choose_weight`) like every other
setting here. A query BM25 finds nothing for keeps the dense list's order.
"""

from __future__ import annotations

from dataclasses import dataclass

from qpeft.metrics import Qrels, Run, mean_ndcg10
from qpeft.scoring.fusion import WEIGHTS


@dataclass(frozen=True)
class Hit:
    """One candidate with the scores of the lists it came from (None: not in that list)."""

    doc_id: str
    score: float
    bm25_score: float | None = None
    dense_score: float | None = None


def scaled(scores: dict[str, float]) -> dict[str, float]:
    """Min-max scale one list's scores to [0, 1]; a list whose scores are all equal (one
    hit, say) is all at its top, 1."""
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high == low:
        return dict.fromkeys(scores, 1.0)
    return {doc: (value - low) / (high - low) for doc, value in scores.items()}


def fuse(
    bm25: list[tuple[str, float]], dense: list[tuple[str, float]], weight: float, depth: int
) -> list[Hit]:
    """The top `depth` of both lists fused with dense weight `weight`, best first."""
    sparse_raw, dense_raw = dict(bm25), dict(dense)
    sparse_norm, dense_norm = scaled(sparse_raw), scaled(dense_raw)
    docs = {**sparse_raw, **dense_raw}

    def fused(doc: str) -> float:
        return weight * dense_norm.get(doc, 0.0) + (1 - weight) * sparse_norm.get(doc, 0.0)

    def tie_break(doc: str) -> tuple[float, float]:
        # A list's last document and the documents it lacks all score 0 on its side. Ties
        # go first to a document the heavier list holds, then to the other list's order:
        # at w = 0, BM25's list, then the dense order among the documents BM25 missed.
        listed = weight * (doc in dense_norm) + (1 - weight) * (doc in sparse_norm)
        other = (1 - weight) * dense_norm.get(doc, -1.0) + weight * sparse_norm.get(doc, -1.0)
        return -listed, -other

    ranked = sorted(docs, key=lambda d: (-fused(d), *tie_break(d), d))[:depth]
    return [Hit(d, fused(d), sparse_raw.get(d), dense_raw.get(d)) for d in ranked]


def choose_weight(
    bm25: dict[str, list[tuple[str, float]]],
    dense: dict[str, list[tuple[str, float]]],
    qrels: Qrels,
    depth: int,
) -> tuple[float, dict[float, float]]:
    """The dense weight with the best mean NDCG@10 over these (dev) queries, and the curve.
    Ties go to the weight nearest 0.5, the one that uses both lists most evenly."""
    curve = {}
    for weight in WEIGHTS:
        # Scored by rank, so that NDCG measures the order written (ties included).
        run: Run = {
            q: {
                h.doc_id: float(depth - i)
                for i, h in enumerate(fuse(bm25.get(q, []), dense[q], weight, depth))
            }
            for q in dense
        }
        curve[weight] = mean_ndcg10(qrels, run)
    best = max(curve, key=lambda w: (round(curve[w], 10), -abs(w - 0.5)))
    return best, curve
