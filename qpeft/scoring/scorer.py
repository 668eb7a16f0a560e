"""The one query-likelihood scorer, used by training's dev checks, offline reranking and
serving: pairs encoded, batched by document (or by length) and run through
`log_likelihood` in eval mode.

Document-major batching puts the pairs of one document into one batch where it can, so the
decoder computes that document's prefix once for all of them (`qpeft.scoring.model.prefix_cache`).
How many prefix tokens a batch holds at once is bounded by `scoring.prefix_token_budget`,
never by the corpus or the number of queries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from qpeft.config import ScoringConfig
from qpeft.lm.template import Batch, PairLayout
from qpeft.scoring.model import QPeftModel, log_likelihood


def score_batch(model: QPeftModel, batch: Batch) -> torch.Tensor:
    """`log_likelihood` without autograd bookkeeping, for reranking and serving."""
    with torch.inference_mode():
        return log_likelihood(model, batch.to(model.backbone.device))


BATCH_SIZE = ScoringConfig.batch_size
PREFIX_TOKEN_BUDGET = ScoringConfig.prefix_token_budget


def length_sorted_batches(layouts: Sequence[PairLayout], batch_size: int) -> Iterator[list[int]]:
    """Indices of `layouts` in batches of similar length, longest first (cuts padding)."""
    order = sorted(range(len(layouts)), key=lambda i: -len(layouts[i].input_ids))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def document_batches(
    layouts: Sequence[PairLayout],
    batch_size: int,
    prefix_token_budget: int,
    owners: Sequence[int] | None = None,
) -> Iterator[list[int]]:
    """Indices of `layouts` in batches that keep each document's pairs together: documents
    longest first, each document's pairs one after another (longest first), at most
    `batch_size` pairs and `prefix_token_budget` prefix tokens (rows x the longest document
    prefix: the keys and values the batch holds) a batch. A document with more pairs than
    fit spans two batches and has its prefix computed in each. `owners` keeps rows of
    different adapters apart where their prefixes differ (see `collate_layouts`)."""
    groups: dict[tuple, list[int]] = {}
    for i, layout in enumerate(layouts):
        owner = owners[i] if owners is not None else None
        groups.setdefault((owner, layout.document_key()), []).append(i)
    ordered = sorted(groups.values(), key=lambda rows: (-layouts[rows[0]].document_prefix, rows[0]))
    batch: list[int] = []
    width = 0
    for rows in ordered:
        for i in sorted(rows, key=lambda i: -len(layouts[i].input_ids)):
            wider = max(width, layouts[i].document_prefix)
            if batch and (
                len(batch) >= batch_size or wider * (len(batch) + 1) > prefix_token_budget
            ):
                yield batch
                batch, wider = [], layouts[i].document_prefix
            batch.append(i)
            width = wider
    if batch:
        yield batch


def scoring_batches(
    layouts: Sequence[PairLayout],
    batch_size: int,
    share_prefix: bool,
    prefix_token_budget: int = PREFIX_TOKEN_BUDGET,
    owners: Sequence[int] | None = None,
) -> Iterator[list[int]]:
    """Document-major batches when prefixes are reused, else batches by length."""
    if share_prefix:
        return document_batches(layouts, batch_size, prefix_token_budget, owners)
    return length_sorted_batches(layouts, batch_size)


def resolve_share_prefix(share_prefix: bool | None, device: torch.device) -> bool:
    """`scoring.share_prefix`: None means on for CPUs (measured in docs/benchmarks.md)."""
    return device.type == "cpu" if share_prefix is None else share_prefix


def score_layouts(
    model: QPeftModel,
    layouts: Sequence[PairLayout],
    batch_size: int,
    share_prefix: bool | None = None,
    prefix_token_budget: int = PREFIX_TOKEN_BUDGET,
) -> list[float]:
    """Scores of encoded pairs in their original order, in eval mode, batched by document
    (prefixes reused) or by length. `share_prefix=None` reuses prefixes' keys/values on
    CPU only."""
    share = resolve_share_prefix(share_prefix, model.backbone.device)
    scores = [0.0] * len(layouts)
    with eval_mode(model):
        for indices in scoring_batches(layouts, batch_size, share, prefix_token_budget):
            batch = model.template.collate([layouts[i] for i in indices], share)
            for i, value in zip(indices, score_batch(model, batch).tolist(), strict=True):
                scores[i] = value
    return scores


def score_pairs(
    model: QPeftModel,
    queries: Sequence[str],
    docs: Sequence[str],
    batch_size: int = BATCH_SIZE,
    share_prefix: bool | None = None,
    prefix_token_budget: int = PREFIX_TOKEN_BUDGET,
) -> list[float]:
    """Query-likelihood scores of (query, doc) pairs, in input order."""
    with eval_mode(model):  # the layout too: a shut hint gate reserves no hint slots
        layouts = model.encode(list(queries), list(docs))
    return score_layouts(model, layouts, batch_size, share_prefix, prefix_token_budget)


def score_with(
    model: QPeftModel, queries: Sequence[str], docs: Sequence[str], scoring: ScoringConfig
) -> list[float]:
    """`score_pairs` with the batching of a `scoring` config section."""
    return score_pairs(
        model, queries, docs, scoring.batch_size, scoring.share_prefix, scoring.prefix_token_budget
    )


@contextmanager
def eval_mode(model: QPeftModel) -> Iterator[None]:
    """The adapter in eval mode (no dropout) for the duration, then as it was."""
    was_training = model.adapter.training
    model.adapter.eval()
    try:
        yield
    finally:
        model.adapter.train(was_training)
