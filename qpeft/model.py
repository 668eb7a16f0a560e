"""A reranker: the frozen backbone, the template and one adapter, built from config."""

from __future__ import annotations

import torch
from torch import nn

from qpeft.adapters import Adapter, build_adapter
from qpeft.backbone import Backbone
from qpeft.config import AdapterConfig, TemplateConfig
from qpeft.template import Batch, PairLayout, Template


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
        template = Template(template_config, backbone.tokenizer, adapter_config.method)
        adapter = build_adapter(adapter_config, backbone, template, trainable_ids)
        template.check_room(adapter.hint_slots(template_config.max_query_tokens))
        return cls(backbone, template, adapter)

    @property
    def method(self) -> str:
        return self.adapter.method

    def forward(self, batch: Batch):
        """Mean label log-likelihood per pair: the same function the scorer runs, exposed as
        `forward` so DDP and DeepSpeed wrappers see (and synchronise) the training pass."""
        from qpeft.scoring import log_likelihood  # scoring builds on this module

        return log_likelihood(self, batch)

    def encode(self, queries: list[str], docs: list[str]) -> list[PairLayout]:
        """Tokenize and lay out pairs, reserving the adapter's hint slots for each."""
        if not queries:  # tokenizers reject an empty batch; a rank may get no dev queries
            return []
        query_ids = self.template.tokenize_queries(queries)
        doc_ids = self.template.tokenize_docs(docs)
        layouts = []
        for query, doc in zip(query_ids, doc_ids, strict=True):
            kept, cut = self.template.clip_query(query)
            layouts.append(self.template.encode(kept, doc, self.adapter.hint_slots(len(kept)), cut))
        return layouts
