"""Methods behind one interface, chosen by `adapter.method` (registered in `qpeft.methods`)."""

from __future__ import annotations

import importlib

import torch

from qpeft.adapters.base import Adapter, HintBlock
from qpeft.config import AdapterConfig
from qpeft.lm.backbone import Backbone
from qpeft.lm.template import Template
from qpeft.methods import METHODS


def adapter_class(method: str) -> type[Adapter]:
    """The adapter class the registry names for `method`."""
    module, _, name = METHODS[method].adapter.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Adapter) and cls.method == method):
        raise TypeError(f"qpeft.methods: {METHODS[method].adapter} is not the {method} adapter")
    return cls


def build_adapter(
    config: AdapterConfig,
    backbone: Backbone,
    template: Template,
    trainable_ids: torch.Tensor | None = None,
) -> Adapter:
    """Instantiate the adapter named by `config.method` on the backbone's device;
    `trainable_ids` limits E' (query-dependent methods) to those vocabulary rows."""
    adapter = adapter_class(config.method)(config, backbone, template, trainable_ids)
    return adapter.to(backbone.device)


__all__ = ["Adapter", "HintBlock", "adapter_class", "build_adapter"]
