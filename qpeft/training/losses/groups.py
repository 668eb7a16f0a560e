"""Query groups, their pairs and in-batch negatives: what every loss is computed over.

A group holds one query's candidates with the positive first. `group_pairs` turns a batch of
training groups into the (query, doc) pairs to score, adding in-batch negatives (other
queries' documents); the losses take the resulting (Q, G) matrix of mean NLLs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TrainingGroup:
    """One training query with its positive document and hard negatives (id, text)."""

    query_id: str
    query: str
    positive: tuple[str, str]
    negatives: list[tuple[str, str]]


@dataclass
class GroupedPairs:
    """Flat pairs to score plus where each lands in the (Q, G) loss matrix."""

    queries: list[str]
    docs: list[str]
    index: torch.Tensor  # (Q, G) long: row of each candidate in the flat pair list
    valid: torch.Tensor  # (Q, G) bool: groups are ragged


def group_pairs(groups: list[TrainingGroup], in_batch_negatives: int = 0) -> GroupedPairs:
    """Pairs for each group: positive, its hard negatives, then up to `in_batch_negatives`
    documents of the other groups in the batch (their positives first), skipping any
    document the query already has."""
    queries: list[str] = []
    docs: list[str] = []
    rows: list[list[int]] = []
    for i, group in enumerate(groups):
        candidates = [group.positive, *group.negatives]
        seen = {doc_id for doc_id, _ in candidates}
        others = [g for g in groups[i + 1 :] + groups[:i]]
        pool = [g.positive for g in others] + [neg for g in others for neg in g.negatives]
        extra = []
        for doc_id, text in pool:
            if len(extra) == in_batch_negatives:
                break
            if doc_id not in seen:
                seen.add(doc_id)
                extra.append((doc_id, text))
        row = []
        for _, text in candidates + extra:
            row.append(len(docs))
            queries.append(group.query)
            docs.append(text)
        rows.append(row)
    width = max(len(r) for r in rows)
    index = torch.zeros((len(rows), width), dtype=torch.long)
    valid = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        index[i, : len(row)] = torch.tensor(row)
        valid[i, : len(row)] = True
    return GroupedPairs(queries, docs, index, valid)


@dataclass
class LossScale:
    """The batch-wide denominators of the loss's means. A subset of a batch's query groups
    divided by the whole batch's counts gives its exact share of the batch loss, so groups
    can be back-propagated in separate micro-batches and their gradients summed."""

    queries: int
    pairs: int  # valid (positive, negative) pairs

    @classmethod
    def of(cls, valid: torch.Tensor) -> LossScale:
        return cls(queries=valid.shape[0], pairs=max(1, int(valid[:, 1:].sum())))
