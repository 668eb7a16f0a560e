"""The one query-likelihood scorer, used by training's dev checks, offline reranking and
serving: pairs encoded, batched by length and run through `log_likelihood` in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from qpeft.model import QPeftModel, log_likelihood
from qpeft.template import Batch, PairLayout


def score_batch(model: QPeftModel, batch: Batch) -> torch.Tensor:
    """`log_likelihood` without autograd bookkeeping, for reranking and serving."""
    with torch.inference_mode():
        return log_likelihood(model, batch.to(model.backbone.device))


def length_sorted_batches(layouts: Sequence[PairLayout], batch_size: int) -> Iterator[list[int]]:
    """Indices of `layouts` in batches of similar length, longest first (cuts padding)."""
    order = sorted(range(len(layouts)), key=lambda i: -len(layouts[i].input_ids))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def score_layouts(
    model: QPeftModel,
    layouts: Sequence[PairLayout],
    batch_size: int,
    share_prefix: bool | None = None,
) -> list[float]:
    """Scores of encoded pairs in their original order, batched by length in eval mode.
    `share_prefix=None` reuses the shared prefix's keys/values on CPU only."""
    if share_prefix is None:
        share_prefix = model.backbone.device.type == "cpu"
    scores = [0.0] * len(layouts)
    with eval_mode(model):
        for indices in length_sorted_batches(layouts, batch_size):
            batch = model.template.collate([layouts[i] for i in indices], share_prefix)
            for i, value in zip(indices, score_batch(model, batch).tolist(), strict=True):
                scores[i] = value
    return scores


def score_pairs(
    model: QPeftModel,
    queries: Sequence[str],
    docs: Sequence[str],
    batch_size: int = 8,
    share_prefix: bool | None = None,
) -> list[float]:
    """Query-likelihood scores of (query, doc) pairs, in input order."""
    with eval_mode(model):  # the layout too: a shut hint gate reserves no hint slots
        layouts = model.encode(list(queries), list(docs))
    return score_layouts(model, layouts, batch_size, share_prefix)


@contextmanager
def eval_mode(model: QPeftModel) -> Iterator[None]:
    """The adapter in eval mode (no dropout) for the duration, then as it was."""
    was_training = model.adapter.training
    model.adapter.eval()
    try:
        yield
    finally:
        model.adapter.train(was_training)
