"""Hybrid first stage: BM25's and the dense retriever's lists fused into one.

Convex combination of min-max normalised scores, fused = w * dense + (1 - w) * bm25, where
a document missing from one list gets 0 on that side (the bottom of its normalised scale).
Chosen over reciprocal rank fusion because it keeps how far apart scores are, and it
matched or beat RRF in Bruch et al. (2023, "An Analysis of Fusion Functions for Hybrid
Retrieval") once w is tuned; w is chosen on dev queries (`choose_weight`) like every other
setting here. A query BM25 finds nothing for keeps the dense list's order.
"""

from __future__ import annotations

from dataclasses import dataclass

from qpeft.fusion import WEIGHTS, normalised
from qpeft.metrics import Qrels, Run, mean_ndcg10


@dataclass(frozen=True)
class Hit:
    """One candidate with the scores of the lists it came from (None: not in that list)."""

    doc_id: str
    score: float
    bm25_score: float | None = None
    dense_score: float | None = None


def fuse(
    bm25: list[tuple[str, float]], dense: list[tuple[str, float]], weight: float, depth: int
) -> list[Hit]:
    """The top `depth` of both lists fused with dense weight `weight`, best first."""
    sparse_raw, dense_raw = dict(bm25), dict(dense)
    sparse_norm = normalised(sparse_raw) if sparse_raw else {}
    dense_norm = normalised(dense_raw) if dense_raw else {}
    hits = [
        Hit(
            doc,
            weight * dense_norm.get(doc, 0.0) + (1 - weight) * sparse_norm.get(doc, 0.0),
            sparse_raw.get(doc),
            dense_raw.get(doc),
        )
        for doc in {**sparse_raw, **dense_raw}
    ]

    # Ties (a list's last document scores 0, as do documents missing from it) go to the
    # document the heavier list holds: at w = 1 the dense list's own order comes first.
    def listed(hit: Hit) -> float:
        return weight * (hit.dense_score is not None) + (1 - weight) * (hit.bm25_score is not None)

    hits.sort(key=lambda h: (-h.score, -listed(h), h.doc_id))
    return hits[:depth]


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
        run: Run = {
            q: {h.doc_id: h.score for h in fuse(bm25.get(q, []), dense[q], weight, depth)}
            for q in dense
        }
        curve[weight] = mean_ndcg10(qrels, run)
    best = max(curve, key=lambda w: (round(curve[w], 10), -abs(w - 0.5)))
    return best, curve
