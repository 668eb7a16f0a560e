"""Q-PEFT-A: multi-head attention from query tokens (E'[q]) over the document's frozen
embeddings (E[d]); one hint vector per query token; end-to-end differentiable.

Untrained, each hint is the document token most like its query token. The value and output
projections start as the identity, so a hint is a weighted mean of document token
embeddings; the query/key projections start as a scaled identity, so the weights are a
sharp softmax over embedding similarity (`MATCH_SHARPNESS`) and the mean is close to one
real token: the query's own word where the document has it, else its nearest neighbour
there. That is Q-PEFT-R's choice made soft, and the LM reads it as text, so an untrained
adapter ranks about as zero-shot does. With PyTorch's random query/key initialisation each
hint was a blur of the whole document: untrained Q-PEFT-A on SmolLM2 ranked Cranfield's 39
dev queries (BM25 top 20) at NDCG@10 0.2106 against zero-shot's 0.2885; this one at 0.2871.
"""

from __future__ import annotations

import torch
from torch import nn

from qpeft.adapters.base import QueryDependentAdapter, key_mask
from qpeft.config import AdapterConfig
from qpeft.lm.backbone import Backbone
from qpeft.lm.template import Batch, Template

# The logit of an average-norm token attending to itself (an unrelated token's is near 0):
# large enough that a hint is about one token. Chosen on Cranfield dev with SmolLM2 (BM25
# top 20, untrained): 10 gave NDCG@10 0.2777, 30 gave 0.2871, zero-shot 0.2885.
MATCH_SHARPNESS = 30.0


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
        if config.init == "paper":  # PyTorch's default init, as the authors' code has it
            return
        with torch.no_grad():
            eye = torch.eye(dim)
            scale = match_scale(backbone, config.heads)
            self.attention.in_proj_weight.copy_(torch.cat([eye * scale, eye, eye]))
            self.attention.in_proj_bias.zero_()
            self.attention.out_proj.weight.copy_(eye)
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
            "init": c.init,
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


def match_scale(backbone: Backbone, heads: int) -> float:
    """The query projection's scale that gives a token attending to itself a logit of
    `MATCH_SHARPNESS`, from the mean squared norm of the LM's input embeddings per head
    (sampled across the vocabulary, as the LM embeds them, Gemma's scale included)."""
    step = max(1, backbone.vocab_size // 4096)
    ids = torch.arange(0, backbone.vocab_size, step, device=backbone.device)
    with torch.no_grad():
        sample = backbone.input_embeddings(ids).float()
    per_head = sample.pow(2).sum(-1).mean().item() / heads
    head_dim = backbone.hidden_size // heads
    return MATCH_SHARPNESS * head_dim**0.5 / per_head
