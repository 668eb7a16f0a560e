"""Soft-prompt baseline: P becomes trainable vectors; no query-dependent module.

The vectors live in peft's `PromptEmbedding`. peft's own prompt-tuning wrapper prepends its
virtual tokens before <bos> and owns the forward pass; we keep P where the template puts it
so that all methods share one layout and one scorer, and initialise it from the prompt text
with the tokenizer already loaded (peft's TEXT init would reload a tokenizer by name).
"""

from __future__ import annotations

import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType
from peft.tuners.prompt_tuning import PromptEmbedding

from qpeft.adapters.base import Adapter
from qpeft.config import AdapterConfig
from qpeft.lm.backbone import Backbone
from qpeft.lm.template import Template


class SoftPrompt(Adapter):
    method = "soft_prompt"
    trains_prefix = True

    def __init__(
        self,
        config: AdapterConfig,
        backbone: Backbone,
        template: Template,
        trainable_ids: torch.Tensor | None = None,
    ):
        super().__init__(config, backbone, template, trainable_ids)
        if not template.prompt_ids:
            raise ValueError("soft_prompt needs a non-empty template.prompt to initialise P from")
        frozen = backbone.input_embeddings
        peft_config = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=len(template.prompt_ids),
            token_dim=frozen.embedding_dim,
            num_transformer_submodules=1,
            prompt_tuning_init=PromptTuningInit.RANDOM,
        )
        self.prompt = PromptEmbedding(peft_config, frozen)
        ids = torch.tensor(template.prompt_ids, device=frozen.weight.device)
        with torch.no_grad():
            self.prompt.embedding.weight.copy_(frozen(ids).float())
        self.register_buffer(
            "virtual_ids", torch.arange(len(template.prompt_ids)), persistent=False
        )

    def prompt_embeddings(self) -> torch.Tensor:
        return self.prompt(self.virtual_ids)
