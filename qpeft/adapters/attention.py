"""Q-PEFT-A: multi-head attention from query tokens (E'[q]) over the document's frozen
embeddings (E[d]); one hint vector per query token; end-to-end differentiable.

The value and output projections start as the identity, so an untrained hint is a
weighted mean of document token embeddings (the weights from the query), a vector in the
LM's input space rather than random noise; the query/key projections keep their default
initialisation, which decides what each query token looks at."""

from __future__ import annotations

import torch
from torch import nn

from qpeft.adapters.base import QueryDependentAdapter, key_mask
from qpeft.backbone import Backbone
from qpeft.config import AdapterConfig
from qpeft.template import Batch, Template


class QueryAttention(QueryDependentAdapter):
    method = "qpeft_a"

    def __init__(
        self,
        config: AdapterConfig,
        backbone: Backbone,
        template: Template,
        trainable_ids: torch.Tensor | None = None,
    ):
        super().__init__(config, backbone, template, trainable_ids)
        dim = backbone.hidden_size
        if dim % config.heads:
            raise ValueError(f"adapter.heads={config.heads} must divide the hidden size {dim}")
        self.attention = nn.MultiheadAttention(
            dim, config.heads, dropout=config.dropout, batch_first=True
        )
        with torch.no_grad():
            self.attention.in_proj_weight[2 * dim :].copy_(torch.eye(dim))
            self.attention.in_proj_bias.zero_()
            self.attention.out_proj.weight.copy_(torch.eye(dim))
            self.attention.out_proj.bias.zero_()

    @classmethod
    def qd_slots(cls, config: AdapterConfig, query_len: int) -> int:
        """One hint per query token, for the first `adapter.max_hints` tokens at most."""
        return min(query_len, config.max_hints) if config.max_hints else query_len

    def hyperparameters(self) -> dict:
        c = self.config
        return {
            "method": self.method,
            "heads": c.heads,
            "dropout": c.dropout,
            "max_hints": c.max_hints,
        }

    def query_dependent(self, batch: Batch, frozen_embeds: torch.Tensor):
        cap = self.config.max_hints or batch.query_ids.shape[1]
        query_ids, query_mask = batch.query_ids[:, :cap], batch.query_mask[:, :cap]
        query = self.embed(query_ids)
        keys = frozen_embeds.to(query.dtype)  # the adapter's dtype: fp32, or bf16 under DeepSpeed
        readable = key_mask(batch)
        empty = ~readable.any(dim=1)  # an empty document: attend to anything, output zero
        readable = readable | empty.unsqueeze(1)
        out, _ = self.attention(query, keys, keys, key_padding_mask=~readable, need_weights=False)
        return out.masked_fill(empty[:, None, None], 0.0), query_mask, query_mask
