"""The registry of methods: one line per method.

Configs, `qpeft rerank`, the demo, model cards and the CLI's choices all derive from this
table, so adding a method is its adapter module plus one line here. The table names each
adapter class by import path: reading it (config validation) loads no torch code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    adapter: str  # "module:Class", an `qpeft.adapters.base.Adapter` subclass
    description: str  # what model cards call it
    trainable: bool = True  # False: nothing to train, `qpeft rerank` takes no adapter folder
    adds_hints: bool = False  # True: the default prompt mentions hints (TemplateConfig)


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            "zero_shot",
            "qpeft.adapters.zero_shot:ZeroShot",
            "zero-shot query likelihood (nothing trained)",
            trainable=False,
        ),
        Method(
            "soft_prompt",
            "qpeft.adapters.soft_prompt:SoftPrompt",
            "soft prompt (trainable prompt vectors)",
        ),
        Method(
            "qpeft_r",
            "qpeft.adapters.topk_tokens:TopKTokens",
            "Q-PEFT-R (top-k document tokens chosen by the query as hints)",
            adds_hints=True,
        ),
        Method(
            "qpeft_a",
            "qpeft.adapters.attention:QueryAttention",
            "Q-PEFT-A (attention from query tokens over document tokens as hints)",
            adds_hints=True,
        ),
        Method("lora", "qpeft.adapters.lora:LoRA", "LoRA (peft) inside the LM, no hints"),
    )
}


def trainable_methods() -> list[str]:
    return [name for name, method in METHODS.items() if method.trainable]
