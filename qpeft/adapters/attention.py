"""Q-PEFT-A: multi-head attention from query tokens (E'[q]) over the input's frozen
embeddings (E[x]); one hint vector per query token; end-to-end differentiable."""

from __future__ import annotations

import torch
from torch import nn

from qpeft.adapters.base import QueryDependentAdapter, key_mask
from qpeft.backbone import Backbone
from qpeft.config import AdapterConfig
from qpeft.template import Batch, Template


class QueryAttention(QueryDependentAdapter):
    method = "qpeft_a"

    def __init__(self, config: AdapterConfig, backbone: Backbone, template: Template):
        super().__init__(config, backbone, template)
        dim = backbone.hidden_size
        if dim % config.heads:
            raise ValueError(f"adapter.heads={config.heads} must divide the hidden size {dim}")
        self.attention = nn.MultiheadAttention(
            dim, config.heads, dropout=config.dropout, batch_first=True
        )

    def qd_slots(self, query_len: int) -> int:
        return query_len

    def hyperparameters(self) -> dict:
        return {"method": self.method, "heads": self.config.heads, "dropout": self.config.dropout}

    def query_dependent(self, batch: Batch, frozen_embeds: torch.Tensor):
        query = self.embed(batch.query_ids)
        keys = frozen_embeds.to(query.dtype)  # the adapter's dtype: fp32, or bf16 under DeepSpeed
        out, _ = self.attention(
            query, keys, keys, key_padding_mask=~key_mask(batch), need_weights=False
        )
        return out, batch.query_mask, batch.query_mask
