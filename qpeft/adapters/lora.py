"""LoRA baseline through peft: low-rank updates inside the LM itself, no hints.

This is the comparison users of RankLLaMA/tevatron-style fine-tuning ask for: the same
query-likelihood objective, loss and template (the plain prompt), but the trainable
weights sit in the LM's attention projections instead of in its input.

peft injects the LoRA layers into the backbone's model in place (`get_peft_model`), so
the LM's own forward runs them. This adapter registers their A/B matrices and dropouts as
its own submodules: the optimiser, DDP, DeepSpeed and `save_adapter` see them like any
adapter's weights, and `adapter.train()` switches LoRA dropout. The folder also gets a
`peft/` copy written by `PeftModel.save_pretrained`, which `peft.PeftModel.from_pretrained`
loads onto the base model without this project.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from qpeft.adapters.base import Adapter
from qpeft.config import AdapterConfig
from qpeft.lm.backbone import Backbone
from qpeft.lm.template import Template

PEFT_FOLDER = "peft"
ADAPTER_NAME = "default"


class LoRA(Adapter):
    method = "lora"
    trains_prefix = True
    changes_lm_weights = True

    def __init__(
        self,
        config: AdapterConfig,
        backbone: Backbone,
        template: Template,
        trainable_ids: torch.Tensor | None = None,
    ):
        super().__init__(config, backbone, template, trainable_ids)
        if any(isinstance(m, BaseTunerLayer) for m in backbone.model.modules()):
            raise ValueError(
                f"{backbone.name}: this model already carries peft layers; a LoRA adapter "
                f"needs a freshly loaded backbone of its own"
            )
        peft_config = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.dropout,
            target_modules=config.lora_target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )
        # Kept in a tuple: the PeftModel wraps the whole LM, which must not become part of
        # the adapter's registered (trained, synchronised, saved) modules.
        self._peft = (get_peft_model(backbone.model, peft_config, adapter_name=ADAPTER_NAME),)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        for name, module in backbone.model.named_modules():
            if isinstance(module, BaseTunerLayer):
                key = name.replace(".", "__")
                self.lora_A[key] = module.lora_A
                self.lora_B[key] = module.lora_B
                self.lora_dropout[key] = module.lora_dropout
        if not len(self.lora_A):
            raise ValueError(
                f"adapter.lora_target_modules: no module of {backbone.name} matches "
                f"{config.lora_target_modules}"
            )

    def hyperparameters(self) -> dict:
        peft_config = self._peft[0].peft_config[ADAPTER_NAME]
        return {
            "method": self.method,
            "lora_rank": peft_config.r,
            "lora_alpha": peft_config.lora_alpha,
            "lora_target_modules": sorted(peft_config.target_modules),
        }

    def export(self, directory: Path, base_model_name_or_path: str) -> None:
        """Write the peft-format copy (`peft/adapter_config.json` and
        `peft/adapter_model.safetensors`) that `PeftModel.from_pretrained` reads."""
        model: PeftModel = self._peft[0]
        model.peft_config[ADAPTER_NAME].base_model_name_or_path = base_model_name_or_path
        model.save_pretrained(str(directory / PEFT_FOLDER), safe_serialization=True)
