"""Methods behind one interface, chosen by `adapter.method`."""

from __future__ import annotations

import torch

from qpeft.adapters.attention import QueryAttention
from qpeft.adapters.base import Adapter, HintBlock
from qpeft.adapters.lora import LoRA
from qpeft.adapters.soft_prompt import SoftPrompt
from qpeft.adapters.topk_tokens import TopKTokens
from qpeft.adapters.zero_shot import ZeroShot
from qpeft.backbone import Backbone
from qpeft.config import AdapterConfig
from qpeft.template import Template

ADAPTERS: dict[str, type[Adapter]] = {
    cls.method: cls for cls in (ZeroShot, SoftPrompt, TopKTokens, QueryAttention, LoRA)
}


def build_adapter(
    config: AdapterConfig,
    backbone: Backbone,
    template: Template,
    trainable_ids: torch.Tensor | None = None,
) -> Adapter:
    """Instantiate the adapter named by `config.method` on the backbone's device;
    `trainable_ids` limits E' (query-dependent methods) to those vocabulary rows."""
    adapter = ADAPTERS[config.method](config, backbone, template, trainable_ids)
    return adapter.to(backbone.device)


__all__ = ["ADAPTERS", "Adapter", "HintBlock", "build_adapter"]
