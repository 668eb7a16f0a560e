"""E' as the frozen embedding table plus a sparse trainable delta.

Q-PEFT's E' is a trainable copy of the LM's input embeddings, initialised from them. Only
the rows of tokens that training feeds it (query tokens, the hint block's words and, for
Q-PEFT-R, the tokens it may select) ever receive a gradient; with AdamW and no weight decay
every other row stays equal to E. So E' = E + delta, where delta has rows for those tokens
only: no dense copy of a 262k x 640 table (Gemma) in memory, Adam moments for the rows
that move, and an adapter file that holds only them. Weight decay pulls the delta toward
zero, i.e. E' toward E.

E here is the LM's own input-embedding lookup, including any scale it applies after the
table (Gemma multiplies by sqrt(hidden size)): E' vectors go into the input sequence as hint
tokens, so they must live where the LM's input embeddings live.
"""

from __future__ import annotations

import torch
from torch import nn


class DeltaEmbedding(nn.Module):
    """`forward(ids) = E[ids] + delta[slot of ids]`; tokens outside `ids` read E alone."""

    def __init__(self, frozen: nn.Embedding, ids: torch.Tensor | None = None):
        super().__init__()
        vocab, dim = frozen.weight.shape
        # The backbone's table, kept out of the module's registry: it is neither trained,
        # saved with the adapter, nor synchronised between workers.
        self._frozen = (frozen,)
        ids = torch.arange(vocab) if ids is None else torch.unique(ids.long().cpu())
        if ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
            raise ValueError(f"token ids must lie in [0, {vocab})")
        device = frozen.weight.device
        self.register_buffer("ids", ids.to(device))  # saved: loading rebuilds the same rows
        slot_of = torch.full((vocab,), -1, dtype=torch.long)
        slot_of[ids] = torch.arange(ids.numel())
        self.register_buffer("slot_of", slot_of.to(device), persistent=False)
        self.delta = nn.Parameter(torch.zeros(ids.numel(), dim, device=device))

    @property
    def num_embeddings(self) -> int:
        return self.slot_of.numel()

    def base(self, token_ids: torch.Tensor) -> torch.Tensor:
        """E[token_ids] as the LM embeds its inputs (with Gemma's scale)."""
        return self._frozen[0](token_ids).to(self.delta.dtype)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        slots = self.slot_of[token_ids]
        trained = (slots >= 0).unsqueeze(-1)
        delta = self.delta[slots.clamp(min=0)] * trained
        return self.base(token_ids) + delta

    def dense_weight(self) -> torch.Tensor:
        """E' as a full table (for checks and export; not used in training)."""
        every = torch.arange(self.num_embeddings, device=self.delta.device)
        return self.forward(every).detach()
