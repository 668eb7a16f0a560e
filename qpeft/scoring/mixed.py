"""Several adapters on one frozen LM, in one forward pass.

A Q-PEFT adapter never changes the LM: it fills the prompt slots (soft prompt) or the hint
slots (Q-PEFT-R, Q-PEFT-A) of the input and, gated, reads the hints through a per-layer,
per-head gate. So pairs scored with different adapters can share one batch: each adapter
assembles the input embeddings of its own rows, the gate becomes a per-row tensor, and the
frozen decoder and LM head run once for all of them. Zero-shot rows are rows whose adapter
adds nothing. Methods that change the LM's weights (LoRA) cannot be mixed: their rows need
another LM.

The common prefix (<bos>, the prompt, "Passage:") is computed once when every row has the
same prefix tokens and none of the adapters replaces the prompt's embeddings. Each
document's prefix is computed once for all rows that read it alike: rows of every adapter
that keeps the hard prompt, or the rows of one soft prompt (`prefix_owners`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch

from qpeft.lm.template import Batch, PairLayout, collate_layouts
from qpeft.scoring.model import QPeftModel, assemble_inputs, decode, label_log_likelihood
from qpeft.scoring.scorer import (
    BATCH_SIZE,
    PREFIX_TOKEN_BUDGET,
    eval_mode,
    resolve_share_prefix,
    scoring_batches,
)


class UnmixableAdapterError(ValueError):
    """An adapter that cannot share the frozen LM's forward pass with others."""


def check_mixable(models: Sequence[QPeftModel]) -> None:
    """Every model must hold the same backbone object and leave its weights alone."""
    backbone = models[0].backbone
    for model in models:
        if model.backbone is not backbone:
            raise UnmixableAdapterError(
                "mixed batches need one backbone object shared by every adapter"
            )
        if model.adapter.changes_lm_weights:
            raise UnmixableAdapterError(
                f"{model.method} changes the LM's weights; its pairs are scored unmixed"
            )


def rows_of(batch: Batch, rows: torch.Tensor) -> Batch:
    """The sub-batch of `rows`, with the batch's column layout (shared prefix included)."""
    return Batch(
        batch.input_ids[rows],
        batch.attention_mask[rows],
        batch.segments[rows],
        batch.query_ids[rows],
        batch.query_mask[rows],
        shared_prefix=batch.shared_prefix,
        document_prefix=batch.document_prefix,
    )


def prefix_owners(models: Sequence[QPeftModel], owners: Sequence[int]) -> list[int]:
    """Who each row's prefix embeddings belong to: -1 for the hard prompt (shared by every
    adapter that keeps it), else the adapter whose trainable prompt replaces it."""
    replaces = [model.adapter.prompt_embeddings() is not None for model in models]
    return [owner if replaces[owner] else -1 for owner in owners]


def common_prefix(models: Sequence[QPeftModel]) -> int:
    """Leading tokens every row shares, embedded alike: 0 unless all templates have the same
    prefix and no adapter replaces the prompt's embeddings."""
    prefixes = {tuple(model.template.shared_prefix_ids) for model in models}
    replaced = any(model.adapter.prompt_embeddings() is not None for model in models)
    return len(next(iter(prefixes))) if len(prefixes) == 1 and not replaced else 0


def mixed_log_likelihood(
    models: Sequence[QPeftModel],
    layouts: Sequence[PairLayout],
    owners: Sequence[int],
    share_prefix: bool = True,
) -> torch.Tensor:
    """Mean label log-likelihood of each layout, shape (B,), `layouts[i]` encoded by and
    scored with `models[owners[i]]`: the same numbers as scoring each adapter's rows alone
    (to float rounding), in one decoder pass."""
    check_mixable(models)
    backbone = models[0].backbone
    device = backbone.device
    # Only this batch's adapters decide: a soft prompt elsewhere does not stop the reuse.
    shared = common_prefix([models[i] for i in sorted(set(owners))])
    batch = collate_layouts(
        list(layouts),
        models[0].template.pad,
        shared,
        share_prefix,
        prefix_owners(models, owners),
    ).to(device)
    owner = torch.tensor(list(owners), device=device)
    embeds = attention_mask = None
    gates, gated_rows = None, torch.zeros(len(batch), dtype=torch.bool, device=device)
    for index, model in enumerate(models):
        rows = (owner == index).nonzero().squeeze(-1)
        if not len(rows):
            continue
        part = rows_of(batch, rows)
        part_embeds, part_mask = assemble_inputs(model, part)
        if embeds is None:
            embeds = torch.zeros(
                (*batch.input_ids.shape, part_embeds.shape[-1]),
                dtype=part_embeds.dtype,
                device=device,
            )
            attention_mask = torch.zeros_like(batch.attention_mask)
        embeds[rows], attention_mask[rows] = part_embeds, part_mask.to(attention_mask.dtype)
        gate = model.adapter.hint_gate()
        if gate is not None:
            if gates is None:
                gates = torch.zeros((len(batch), *gate.shape), dtype=gate.dtype, device=device)
            gates[rows] = gate
            gated_rows[rows] = True
    hidden = decode(backbone, batch, embeds, attention_mask, gates, gated_rows)
    return label_log_likelihood(backbone, batch, hidden)


def score_mixed(
    models: Sequence[QPeftModel],
    queries: Sequence[str],
    docs: Sequence[str],
    owners: Sequence[int],
    batch_size: int = BATCH_SIZE,
    share_prefix: bool | None = None,
    prefix_token_budget: int = PREFIX_TOKEN_BUDGET,
) -> list[float]:
    """Query-likelihood scores of (query, doc) pairs, pair i scored with
    `models[owners[i]]`, batched by length across adapters, in input order."""
    layouts: list[PairLayout | None] = [None] * len(queries)
    with all_in_eval_mode(models):  # the layout too: a shut hint gate reserves no hint slots
        for index, model in enumerate(models):
            rows = [i for i, owner in enumerate(owners) if owner == index]
            if not rows:
                continue
            encoded = model.encode([queries[i] for i in rows], [docs[i] for i in rows])
            for i, layout in zip(rows, encoded, strict=True):
                layouts[i] = layout
        return score_mixed_layouts(
            models, layouts, owners, batch_size, share_prefix, prefix_token_budget
        )


def score_mixed_layouts(
    models: Sequence[QPeftModel],
    layouts: Sequence[PairLayout],
    owners: Sequence[int],
    batch_size: int = BATCH_SIZE,
    share_prefix: bool | None = None,
    prefix_token_budget: int = PREFIX_TOKEN_BUDGET,
) -> list[float]:
    """`score_mixed` for pairs already encoded, each by its own adapter (as a service does
    in the request's handler); eval mode, batched by length, in input order."""
    check_mixable(models)
    share = resolve_share_prefix(share_prefix, models[0].backbone.device)
    scores = [0.0] * len(layouts)
    with all_in_eval_mode(models), torch.inference_mode():
        owned_by = prefix_owners(models, owners)
        batches = scoring_batches(layouts, batch_size, share, prefix_token_budget, owned_by)
        for indices in batches:
            values = mixed_log_likelihood(
                models,
                [layouts[i] for i in indices],
                [owners[i] for i in indices],
                share,
            )
            for i, value in zip(indices, values.tolist(), strict=True):
                scores[i] = value
    return scores


@contextmanager
def all_in_eval_mode(models: Sequence[QPeftModel]) -> Iterator[None]:
    """Every adapter in eval mode for the duration (`qpeft.scoring.scorer.eval_mode` for each)."""
    with ExitStack() as stack:
        for model in models:
            stack.enter_context(eval_mode(model))
        yield
