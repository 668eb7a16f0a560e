"""Q-PEFT-R: hints are E' of the top-k document/template tokens chosen by the query.

S = sim(E'[q_i], E[x_j]) over the formatted input's tokens (padding, hint slots and the
query masked out), A = sigmoid(S); each input token is ranked by its best score over query
tokens, distinct ids are kept (best occurrence), special tokens (and optionally query tokens
and stopwords) dropped, and the first k taken. Selection is not differentiable; gradients
reach the selected E' rows and the MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qpeft.adapters.base import QueryDependentAdapter, key_mask
from qpeft.config import AdapterConfig
from qpeft.lm.backbone import Backbone
from qpeft.lm.template import Batch, Template


def stopword_ids(tokenizer, words: list[str]) -> list[int]:
    """Ids of single-token spellings of `words` (bare and with a leading space)."""
    ids: set[int] = set()
    for word in words:
        for spelling in (word, " " + word):
            encoded = tokenizer(spelling, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1:
                ids.add(encoded[0])
    return sorted(ids)


class TopKTokens(QueryDependentAdapter):
    method = "qpeft_r"

    def __init__(
        self,
        config: AdapterConfig,
        backbone: Backbone,
        template: Template,
        trainable_ids: torch.Tensor | None = None,
    ):
        super().__init__(config, backbone, template, trainable_ids)
        tokenizer = backbone.tokenizer
        banned = set(tokenizer.all_special_ids) | set(stopword_ids(tokenizer, config.stopwords))
        self.register_buffer(
            "banned_ids", torch.tensor(sorted(banned), dtype=torch.long), persistent=False
        )

    @classmethod
    def qd_slots(cls, config: AdapterConfig, query_len: int) -> int:
        return config.k

    @classmethod
    def trainable_token_ids(
        cls, template: Template, queries: list[list[int]], docs: list[list[int]]
    ) -> list[int] | None:
        """Also every token a hint may be chosen from: the documents' and the template's."""
        ids = set(super().trainable_token_ids(template, queries, docs) or [])
        ids.update([template.bos, *template.prompt_ids, *template.passage_prefix_ids])
        ids.update([*template.passage_suffix_ids, *template.question_ids])
        for doc in docs:
            ids.update(doc)
        return sorted(ids)

    def hyperparameters(self) -> dict:
        c = self.config
        return {
            "method": self.method,
            "k": c.k,
            "similarity": c.similarity,
            "drop_query_tokens": c.drop_query_tokens,
            "stopwords": list(c.stopwords),
            "init": c.init,
        }

    @torch.no_grad()
    def select(
        self, batch: Batch, frozen_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, k) of the selected hints and which of them exist (B, k)."""
        query = self.embed(batch.query_ids)
        keys = frozen_embeds.to(query.dtype)  # the adapter's dtype: fp32, or bf16 under DeepSpeed
        if self.config.similarity == "cosine":
            query = F.normalize(query, dim=-1)
            keys = F.normalize(keys, dim=-1)
        scores = torch.sigmoid(torch.einsum("bqd,btd->bqt", query, keys))
        scores = scores.masked_fill(~batch.query_mask.unsqueeze(-1), float("-inf"))
        best = scores.max(dim=1).values.masked_fill(~key_mask(batch), float("-inf"))
        # Best score per distinct vocabulary id: a (B, V) scatter-max keeps it vectorised.
        per_id = torch.full(
            (best.shape[0], self.embed.num_embeddings),
            float("-inf"),
            device=best.device,
            dtype=best.dtype,
        )
        per_id.scatter_reduce_(1, batch.input_ids, best, reduce="amax", include_self=True)
        per_id[:, self.banned_ids] = float("-inf")
        if self.config.drop_query_tokens:
            in_query = torch.zeros_like(per_id).scatter_reduce_(
                1, batch.query_ids, batch.query_mask.to(per_id.dtype), reduce="amax"
            )
            per_id.masked_fill_(in_query > 0, float("-inf"))
        values, ids = per_id.topk(self.config.k, dim=1)
        return ids, torch.isfinite(values)

    def query_dependent(self, batch: Batch, frozen_embeds: torch.Tensor):
        ids, found = self.select(batch, frozen_embeds)
        present = torch.ones_like(found)
        return self.embed(ids), present, found
