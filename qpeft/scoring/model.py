"""A reranker: the frozen backbone, the template and one adapter, built from config, and
its forward pass.

score(q, d) = mean log p(label tokens | everything before), label = <bos> q <eos>. The LM
head runs only at the label positions: the decoder's hidden states are sliced first, so no
`batch x seq x vocab` tensor is ever built.
"""

from __future__ import annotations

import torch
from torch import nn

from qpeft.adapters import Adapter, build_adapter
from qpeft.config import AdapterConfig, TemplateConfig
from qpeft.lm.backbone import Backbone
from qpeft.lm.template import Batch, PairLayout, Segment, Template


class QPeftModel(nn.Module):
    """Holds the parts that every scorer call needs; only `adapter` is trainable."""

    def __init__(self, backbone: Backbone, template: Template, adapter: Adapter):
        super().__init__()
        self.backbone = backbone
        self.template = template
        self.adapter = adapter

    @classmethod
    def build(
        cls,
        backbone: Backbone,
        template_config: TemplateConfig,
        adapter_config: AdapterConfig,
        trainable_ids: torch.Tensor | None = None,
    ) -> QPeftModel:
        template = Template(
            template_config, backbone.tokenizer, adapter_config.method, adapter_config.hint_gate
        )
        adapter = build_adapter(adapter_config, backbone, template, trainable_ids)
        template.check_room(adapter.hint_slots([template_config.max_query_tokens])[0])
        return cls(backbone, template, adapter)

    @property
    def method(self) -> str:
        return self.adapter.method

    def forward(self, batch: Batch):
        """Mean label log-likelihood per pair: the same function the scorer runs, exposed as
        `forward` so DDP and DeepSpeed wrappers see (and synchronise) the training pass."""
        return log_likelihood(self, batch)

    def backprop_tokens(self, layout: PairLayout) -> int:
        """Tokens of a pair that training back-propagates through, what its memory follows:
        all of them where trained weights shape the prefix (soft prompt, LoRA); else those
        after the document prefix, which runs without gradients (`run_decoder`)."""
        if self.adapter.trains_prefix:
            return len(layout.input_ids)
        return len(layout.input_ids) - max(
            layout.document_prefix, len(self.template.shared_prefix_ids)
        )

    def encode(self, queries: list[str], docs: list[str]) -> list[PairLayout]:
        """Tokenize and lay out pairs, reserving the adapter's hint slots for each."""
        if not queries:  # tokenizers reject an empty batch; a rank may get no dev queries
            return []
        query_ids = self.template.tokenize_queries(queries)
        doc_ids = self.template.tokenize_docs(docs)
        clipped = [self.template.clip_query(query) for query in query_ids]
        slots = self.adapter.hint_slots([len(kept) for kept, _ in clipped])
        return [
            self.template.encode(kept, doc, n_slots, cut)
            for (kept, cut), doc, n_slots in zip(clipped, doc_ids, slots, strict=True)
        ]


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
    slots = batch.segments == Segment.HINT
    if block is not None:
        embeds = embeds.clone()
        embeds[slots] = block.vectors[block.present].to(embeds.dtype)
        attention_mask = attention_mask.clone()
        attention_mask[slots] = block.visible[block.present].to(attention_mask.dtype)
    elif slots.any():  # encoded in training mode, scored with a shut gate: nothing to read
        attention_mask = attention_mask.masked_fill(slots, 0)
    return embeds, attention_mask


def run_decoder(
    model: QPeftModel, batch: Batch, embeds: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Hidden states of the frozen decoder for the assembled inputs of one adapter's batch.

    The common prefix's keys and values are computed once for the batch and each distinct
    document's prefix once (`prefix_cache`), and reused by every row that reads them (the
    numbers equal a full pass, with fewer FLOPs), except when training a method whose
    weights shape them (soft prompt, LoRA): the prefix runs without gradients, so training
    back-propagates through the hint block, the question and the label only.
    A gated adapter's hint block is read through its gate (`qpeft.lm.gated_attention`).
    """
    gate = model.adapter.hint_gate()
    reuse_prefix = not (model.adapter.trains_prefix and torch.is_grad_enabled())
    return decode(model.backbone, batch, embeds, attention_mask, gate, None, reuse_prefix)


def decode(
    backbone: Backbone,
    batch: Batch,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    gate: torch.Tensor | None,
    gated_rows: torch.Tensor | None,
    reuse_prefix: bool = True,
) -> torch.Tensor:
    """The decoder pass behind `run_decoder`, for rows that may belong to several adapters
    (`qpeft.scoring.mixed`): `gate` is (layers, heads) for every row or (B, layers, heads) per row,
    and only the hint slots of `gated_rows` ((B,) bool; None: every row) are read through
    it; other rows' hint slots, if any, are plain input tokens (the paper's layout)."""
    decoder = backbone.decoder
    # Positions count attended tokens only: padding and hidden hint slots shift nothing.
    counted = attention_mask.bool()
    gated = {}
    if gate is not None:
        # Gated hints take no positions either, so the text reads as it does zero-shot.
        hint_keys = counted & (batch.segments == Segment.HINT)
        if gated_rows is not None:
            hint_keys = hint_keys & gated_rows[:, None]
        counted = counted & ~hint_keys
        gated = {"hint_keys": hint_keys, "hint_gate": gate, "hint_masks": {}}
    position_ids = (counted.long().cumsum(-1) - 1).clamp(min=0)
    split = max(batch.shared_prefix, batch.document_prefix)
    if split == 0 or not reuse_prefix:
        return decoder(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **gated,
        ).last_hidden_state
    with torch.no_grad():
        cache = prefix_cache(decoder, batch, embeds, attention_mask, position_ids)
    return decoder(
        inputs_embeds=embeds[:, split:],
        attention_mask=attention_mask,
        position_ids=position_ids[:, split:],
        cache=cache,
        use_cache=False,
        **gated,
    ).last_hidden_state


def prefix_cache(
    decoder: nn.Module,
    batch: Batch,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
):
    """Keys and values of every row's first `document_prefix` columns, one row per batch
    row, each computed once and copied to the rows that read it: each distinct document's
    prefix (common part included: a pass over a dozen tokens alone costs more than the
    dozen tokens inside a longer pass), or, without document prefixes, the common prefix
    once for the batch. The prefix holds no hint slot (hints follow the document), so it
    runs as plain attention."""
    shared, split = batch.shared_prefix, max(batch.shared_prefix, batch.document_prefix)
    if batch.prefix_source is None or split == shared:
        cache = decoder(
            inputs_embeds=embeds[:1, :shared],
            position_ids=position_ids[:1, :shared],
            use_cache=True,
        ).cache
        cache.batch_repeat_interleave(len(batch))
        return cache
    sources, reader_of = torch.unique(batch.prefix_source, return_inverse=True)
    cache = decoder(
        inputs_embeds=embeds[sources, :split],
        attention_mask=attention_mask[sources, :split],
        position_ids=position_ids[sources, :split],
        use_cache=True,
    ).cache
    cache.batch_select_indices(reader_of)
    return cache


def prefix_shape(backbone: Backbone) -> tuple[int, int, int, int]:
    """(layers, 2, kv_heads, head_dim): the keys and values one prefix token holds."""
    lm = backbone.decoder.config
    kv_heads = getattr(lm, "num_key_value_heads", None) or lm.num_attention_heads
    head_dim = getattr(lm, "head_dim", None) or lm.hidden_size // lm.num_attention_heads
    return lm.num_hidden_layers, 2, kv_heads, head_dim


def prefix_bytes_per_token(backbone: Backbone) -> int:
    """Bytes of keys and values one prefix token holds: layers x 2 x kv_heads x head_dim x
    the dtype's bytes (what `scoring.prefix_token_budget` multiplies)."""
    layers, two, kv_heads, head_dim = prefix_shape(backbone)
    return layers * two * kv_heads * head_dim * backbone.dtype.itemsize


def describe_prefix_budget(backbone: Backbone, tokens: int) -> str:
    """One line saying what `scoring.prefix_token_budget` costs in memory on this LM."""
    layers, _, kv_heads, head_dim = prefix_shape(backbone)
    per_token = prefix_bytes_per_token(backbone)
    return (
        f"prefix budget: {tokens} tokens x {per_token / 1024:.1f} KiB = "
        f"{tokens * per_token / 2**20:.0f} MiB of keys and values at most ({layers} layers x 2 "
        f"x {kv_heads} kv heads x {head_dim} head dim x {backbone.dtype.itemsize} bytes)"
    )


def log_likelihood(model: QPeftModel, batch: Batch) -> torch.Tensor:
    """Mean log-likelihood of each pair's label tokens, shape (B,); differentiable."""
    embeds, attention_mask = assemble_inputs(model, batch)
    hidden = run_decoder(model, batch, embeds, attention_mask)
    return label_log_likelihood(model.backbone, batch, hidden)


def label_log_likelihood(backbone: Backbone, batch: Batch, hidden: torch.Tensor) -> torch.Tensor:
    """Mean log-likelihood of each row's label tokens from the decoder's hidden states."""
    # Left padding puts every row's labels at the end: take the last L positions.
    is_label = batch.segments == Segment.LABEL
    width = int(is_label.sum(-1).max())
    label_mask = is_label[:, -width:]
    # Only the real label positions, packed into one contiguous (N, d) matrix: rows whose
    # query is shorter than the batch's longest add no LM-head work (with a 262k-token
    # vocabulary the head costs more per position than a decoder layer), and a strided
    # (B, L, d) slice would make torch.matmul fall back to a bmm that copies the whole LM
    # head once per row.
    states = hidden[:, -width - 1 : -1][label_mask]
    targets = batch.input_ids[:, -width:][label_mask]
    # One product for all of them: the head's weights are read once (in chunks of rows,
    # each chunk reads the whole 262k x d matrix again, measured slower).
    logits = backbone.lm_head(states).float()
    token_ll = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    rows = torch.arange(len(batch), device=hidden.device)[:, None].expand(-1, width)[label_mask]
    totals = torch.zeros(len(batch), dtype=token_ll.dtype, device=hidden.device)
    return totals.index_add(0, rows, token_ll) / label_mask.sum(-1)
