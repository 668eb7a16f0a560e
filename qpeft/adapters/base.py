"""The one interface every method implements, and the shared hint-block machinery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from qpeft.adapters.delta_embedding import DeltaEmbedding
from qpeft.config import AdapterConfig
from qpeft.lm.backbone import Backbone
from qpeft.lm.gated_attention import HintGate, use_gated_attention
from qpeft.lm.template import Batch, Segment, Template


@dataclass
class HintBlock:
    """Hint vectors for a batch, aligned with the template's reserved hint slots.

    `present` marks the entries that fill reserved slots (in order, row by row); `visible`
    marks those the LM may attend to (Q-PEFT-R hides slots it found no token for).
    """

    vectors: torch.Tensor  # (B, S, d)
    present: torch.Tensor  # (B, S) bool
    visible: torch.Tensor  # (B, S) bool


class Adapter(nn.Module):
    """A method: how many hint slots it reserves, and what goes into them (or into P)."""

    method: ClassVar[str]
    # True where training changes the shared prefix's keys/values (a trainable P, or
    # weights inside the LM): the scorer computes the prefix once without gradients, so it
    # is only reused when no gradients are wanted.
    trains_prefix: ClassVar[bool] = False
    # True where the method puts weights inside the LM (LoRA): its pairs need an LM of their
    # own, so they are never scored in one pass with other adapters' (`qpeft.scoring.mixed`).
    changes_lm_weights: ClassVar[bool] = False

    def __init__(
        self,
        config: AdapterConfig,
        backbone: Backbone,
        template: Template,
        trainable_ids: torch.Tensor | None = None,
    ):
        super().__init__()
        self.config = config
        self.template = template

    @classmethod
    def trainable_token_ids(
        cls, template: Template, queries: list[list[int]], docs: list[list[int]]
    ) -> list[int] | None:
        """Vocabulary rows of E' that training on these tokenized queries and documents can
        reach (None: the method has no E')."""
        return None

    @classmethod
    def slots_for(cls, config: AdapterConfig, template: Template, query_len: int) -> int:
        """Hint positions a query of `query_len` tokens needs; known from the config alone,
        so drivers can check inputs against the template without loading the model."""
        return 0

    def hint_slots(self, query_lens: list[int]) -> list[int]:
        """Hint positions for each of a batch's queries, asked once per batch: a gated
        adapter looks at its gate to answer, a device sync on GPUs."""
        return [self.slots_for(self.config, self.template, n) for n in query_lens]

    def prompt_embeddings(self) -> torch.Tensor | None:
        """Trainable vectors for the prompt P positions, or None to keep the hard prompt."""
        return None

    def hints(self, batch: Batch, frozen_embeds: torch.Tensor) -> HintBlock | None:
        """Vectors for the hint slots, from the pair's query and frozen input embeddings."""
        return None

    def hint_gate(self) -> torch.Tensor | None:
        """How far each layer and head of the LM reads the hint block, (layers, heads) in
        [-1, 1]; None: the hints are plain input tokens (the paper's layout), or no hints."""
        return None

    def hyperparameters(self) -> dict:
        """What `adapter_config.json` records to rebuild this adapter."""
        return {"method": self.method}

    def export(self, directory: Path, base_model_name_or_path: str) -> None:
        """Extra files for the adapter folder besides the weights and config (none here)."""

    def num_trainable_parameters(self) -> int:
        # Under DeepSpeed ZeRO-3 local tensors are empty; `ds_numel` keeps the full size.
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.parameters() if p.requires_grad)


def key_mask(batch: Batch) -> torch.Tensor:
    """Input tokens the QD module may look at: the document's. <bos>, the prompt, the
    template's fixed words, hint slots, the label and padding are the same for every
    document or not input at all; as keys they would let Q-PEFT-R pick prompt words as
    "hints" (the official code masks <bos> and the prompt too)."""
    return batch.segments == Segment.DOC


class QueryDependentAdapter(Adapter):
    """Shared part of Q-PEFT-R and -A: the trainable embedding copy E' and the hint MLP.

    With `adapter.init: identity` the block is x + MLP(x) for
    x = [E'("hints: "); QD(q, d); E'("\\n")]; subclasses provide QD(q, d). The MLP's output
    layer starts at zero (as LoRA's B does), so an untrained block is its inputs: real word
    embeddings for the hint words and Q-PEFT-R's chosen tokens, which the LM reads as text.
    Training then starts from a ranking close to zero-shot instead of from random vectors in
    the input. With `init: paper` the block is MLP(x) with PyTorch's default init, as in
    the authors' code (`docspec_layer_num` linear layers with ReLU between them).
    """

    def __init__(
        self,
        config: AdapterConfig,
        backbone: Backbone,
        template: Template,
        trainable_ids: torch.Tensor | None = None,
    ):
        super().__init__(config, backbone, template, trainable_ids)
        dim = backbone.hidden_size
        # E': the LM's input embeddings plus a trainable delta on the rows training reaches
        # (every row when `trainable_ids` is None).
        self.embed = DeltaEmbedding(backbone.input_embeddings, trainable_ids)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.residual = config.init == "identity"
        if self.residual:
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)
        self.gate = None
        if config.hint_gate:
            lm = backbone.decoder.config
            self.gate = HintGate(lm.num_hidden_layers, lm.num_attention_heads)
            use_gated_attention(backbone.decoder)
        self.register_buffer(
            "hint_prefix_ids",
            torch.tensor(template.hint_prefix_ids, dtype=torch.long),
            persistent=False,
        )
        self.register_buffer(
            "hint_suffix_ids",
            torch.tensor(template.hint_suffix_ids, dtype=torch.long),
            persistent=False,
        )

    def reads_hints(self) -> bool:
        """False in eval mode while the gate is shut (exactly zero: untrained): the LM would
        read nothing from the block, so scoring leaves it out and an untrained adapter
        scores as zero-shot in every dtype, at zero-shot's cost. Training always builds the
        block: the gate's first gradient comes through it."""
        return self.gate is None or self.training or bool(self.gate().any())

    def hint_slots(self, query_lens: list[int]) -> list[int]:
        return super().hint_slots(query_lens) if self.reads_hints() else [0] * len(query_lens)

    def hint_gate(self) -> torch.Tensor | None:
        if self.gate is None:
            return None
        values = self.gate()  # once: `reads_hints` would compute it again
        return values if self.training or bool(values.any()) else None

    @classmethod
    def qd_slots(cls, config: AdapterConfig, query_len: int) -> int:
        raise NotImplementedError

    @classmethod
    def trainable_token_ids(
        cls, template: Template, queries: list[list[int]], docs: list[list[int]]
    ) -> list[int] | None:
        """The hint block's words and the query tokens (E'[q] makes the QD module's
        queries)."""
        ids = set(template.hint_prefix_ids) | set(template.hint_suffix_ids)
        for query in queries:
            ids.update(template.clip_query(query)[0])
        return sorted(ids)

    @classmethod
    def slots_for(cls, config: AdapterConfig, template: Template, query_len: int) -> int:
        fixed = len(template.hint_prefix_ids) + len(template.hint_suffix_ids)
        return fixed + cls.qd_slots(config, query_len)

    def query_dependent(
        self, batch: Batch, frozen_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """QD(q, d): vectors (B, Q, d), `present` (B, Q) and `visible` (B, Q)."""
        raise NotImplementedError

    def hints(self, batch: Batch, frozen_embeds: torch.Tensor) -> HintBlock | None:
        if not self.reads_hints():
            return None
        qd, qd_present, qd_visible = self.query_dependent(batch, frozen_embeds)
        n = qd.shape[0]
        prefix = self.embed(self.hint_prefix_ids).unsqueeze(0).expand(n, -1, -1)
        suffix = self.embed(self.hint_suffix_ids).unsqueeze(0).expand(n, -1, -1)
        block = torch.cat([prefix, qd, suffix], dim=1)
        vectors = block + self.mlp(block) if self.residual else self.mlp(block)
        ones_p = torch.ones(n, prefix.shape[1], dtype=torch.bool, device=qd.device)
        ones_s = torch.ones(n, suffix.shape[1], dtype=torch.bool, device=qd.device)
        present = torch.cat([ones_p, qd_present, ones_s], dim=1)
        visible = torch.cat([ones_p, qd_visible, ones_s], dim=1)
        return HintBlock(vectors=vectors, present=present, visible=visible)
