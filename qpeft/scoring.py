"""The one query-likelihood scorer, used by training, offline reranking and serving.

score(q, d) = mean log p(label tokens | everything before), label = <bos> q <eos>. The LM
head runs only at the label positions: the decoder's hidden states are sliced first, so no
`batch x seq x vocab` tensor is ever built.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from qpeft.model import QPeftModel
from qpeft.template import Batch, PairLayout, Segment


def assemble_inputs(model: QPeftModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Input embeddings with P and the hint block filled in, and the final attention mask."""
    backbone = model.backbone
    frozen = backbone.input_embeddings(batch.input_ids)
    embeds = frozen
    attention_mask = batch.attention_mask
    prompt = model.adapter.prompt_embeddings()
    if prompt is not None:
        embeds = embeds.clone()
        slots = batch.segments == Segment.PROMPT
        embeds[slots] = prompt.to(embeds.dtype).repeat(len(batch), 1)
    block = model.adapter.hints(batch, frozen)
    if block is not None:
        embeds = embeds.clone()
        slots = batch.segments == Segment.HINT
        embeds[slots] = block.vectors[block.present].to(embeds.dtype)
        attention_mask = attention_mask.clone()
        attention_mask[slots] = block.visible[block.present].to(attention_mask.dtype)
    return embeds, attention_mask


def run_decoder(
    model: QPeftModel, batch: Batch, embeds: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Hidden states of the frozen decoder for the assembled inputs.

    The shared prefix's keys and values are computed once for the batch and reused by every
    row (the numbers equal a full pass, with fewer FLOPs), except when training a method
    whose weights shape them (soft prompt, LoRA): the prefix runs without gradients.
    """
    decoder = model.backbone.decoder
    # Positions count attended tokens only: padding and hidden hint slots shift nothing.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    shared = batch.shared_prefix
    if shared == 0 or (model.adapter.trains_prefix and torch.is_grad_enabled()):
        return decoder(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
    with torch.no_grad():
        cache = decoder(
            inputs_embeds=embeds[:1, :shared],
            position_ids=position_ids[:1, :shared],
            use_cache=True,
        ).cache
    cache.batch_repeat_interleave(len(batch))
    return decoder(
        inputs_embeds=embeds[:, shared:],
        attention_mask=attention_mask,
        position_ids=position_ids[:, shared:],
        cache=cache,
        use_cache=False,
    ).last_hidden_state


def log_likelihood(model: QPeftModel, batch: Batch) -> torch.Tensor:
    """Mean log-likelihood of each pair's label tokens, shape (B,); differentiable."""
    embeds, attention_mask = assemble_inputs(model, batch)
    hidden = run_decoder(model, batch, embeds, attention_mask)
    # Left padding puts every row's labels at the end: take the last L positions.
    is_label = batch.segments == Segment.LABEL
    width = int(is_label.sum(-1).max())
    label_mask = is_label[:, -width:]
    targets = batch.input_ids[:, -width:]
    logits = model.backbone.lm_head(hidden[:, -width - 1 : -1]).float()
    token_ll = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    token_ll = token_ll * label_mask
    return token_ll.sum(-1) / label_mask.sum(-1)


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
    was_training = model.adapter.training
    model.adapter.eval()
    scores = [0.0] * len(layouts)
    try:
        for indices in length_sorted_batches(layouts, batch_size):
            batch = model.template.collate([layouts[i] for i in indices], share_prefix)
            for i, value in zip(indices, score_batch(model, batch).tolist(), strict=True):
                scores[i] = value
    finally:
        model.adapter.train(was_training)
    return scores


def score_pairs(
    model: QPeftModel,
    queries: Sequence[str],
    docs: Sequence[str],
    batch_size: int = 8,
    share_prefix: bool | None = None,
) -> list[float]:
    """Query-likelihood scores of (query, doc) pairs, in input order."""
    layouts = model.encode(list(queries), list(docs))
    return score_layouts(model, layouts, batch_size, share_prefix)
