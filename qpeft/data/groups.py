"""Training groups: per query one positive and N hard negatives from its candidates."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class GroupChoice:
    """The outcome for one query: a group, or the reason there is none."""

    positive_id: str | None
    negative_ids: list[str]
    skipped: str | None  # "no_positive", "no_negative" or None


def choose_group(
    ranked_doc_ids: list[str],
    judgments: dict[str, int],
    min_relevance: int,
    n_negatives: int,
    negative_depth: int,
    rng: random.Random,
) -> GroupChoice:
    """Pick the positive (highest grade, then best first-stage rank, then id) and sample
    `n_negatives` hard negatives from the top `negative_depth` candidates that are not
    judged relevant (judged non-relevant and unjudged documents both qualify)."""
    relevant = {d: g for d, g in judgments.items() if g >= min_relevance}
    if not relevant:
        return GroupChoice(None, [], "no_positive")
    rank = {d: i for i, d in enumerate(ranked_doc_ids)}
    positive = min(relevant, key=lambda d: (-relevant[d], rank.get(d, len(rank)), d))
    pool = [d for d in ranked_doc_ids[:negative_depth] if d not in relevant]
    if not pool:
        return GroupChoice(positive, [], "no_negative")
    negatives = rng.sample(pool, min(n_negatives, len(pool)))
    return GroupChoice(positive, negatives, None)
