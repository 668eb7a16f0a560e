"""The LoRA baseline: peft's layers inside the LM, trained and saved like any adapter, and a
folder that plain peft can load."""

import copy

import pytest
import torch
from peft import PeftModel

from qpeft.config import AdapterConfig, TemplateConfig
from qpeft.loading.checkpoint import load_adapter, save_adapter
from qpeft.scoring.model import QPeftModel, log_likelihood
from qpeft.scoring.scorer import score_pairs
from tests.conftest import TINY_TEMPLATE, build_model

QUERIES = ["what is flow", "heat", "boundary layer of flow"]
DOCS = ["wing flow heat", "layer of heat", "the boundary layer is thin"]


def perturb(model: QPeftModel) -> None:
    """Move LoRA's B off zero so the adapter changes the scores."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.2)


def test_untrained_lora_scores_as_zero_shot(tiny):
    zero_shot = score_pairs(build_model(tiny, "zero_shot"), QUERIES, DOCS)
    lora = build_model(tiny, "lora")
    assert score_pairs(lora, QUERIES, DOCS) == pytest.approx(zero_shot, abs=1e-6)
    perturb(lora)
    assert score_pairs(lora, QUERIES, DOCS) != pytest.approx(zero_shot, abs=1e-3)


def test_only_lora_matrices_train_and_the_prefix_gets_gradients(tiny):
    model = build_model(tiny, "lora", dropout=0.0)
    perturb(model)
    layouts = model.encode(QUERIES, DOCS)

    def grads(share_prefix: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        batch = model.template.collate(layouts, share_prefix)
        (-log_likelihood(model, batch).mean()).backward()
        return {n: p.grad.clone() for n, p in model.adapter.named_parameters()}

    shared, full = grads(True), grads(False)
    assert shared.keys() == full.keys() and all(
        torch.allclose(shared[n], full[n], atol=1e-6) for n in full
    )  # training never reuses a prefix computed without gradients
    frozen = [p for n, p in model.backbone.model.named_parameters() if "lora_" not in n]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)


def test_saved_folder_loads_in_plain_peft_with_the_same_logits(tiny, tmp_path):
    model = build_model(tiny, "lora", lora_rank=4, lora_target_modules=["q_proj", "o_proj"])
    perturb(model)
    directory = save_adapter(model, tmp_path / "adapter")
    ids = torch.tensor([model.encode(QUERIES[:1], DOCS[:1])[0].input_ids])
    model.adapter.eval()  # LoRA dropout belongs to the adapter: off, as when scoring
    with torch.no_grad():
        ours = model.backbone.model(ids).logits
        plain = PeftModel.from_pretrained(copy.deepcopy(tiny.model), directory / "peft")
        theirs = plain.eval()(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert plain.peft_config["default"].target_modules == {"q_proj", "o_proj"}
    reloaded = load_adapter(directory, copy.deepcopy(tiny))
    assert score_pairs(reloaded, QUERIES, DOCS) == score_pairs(model, QUERIES, DOCS)
    assert reloaded.adapter.hyperparameters()["lora_rank"] == 4


def test_a_backbone_carries_one_lora_adapter(tiny):
    backbone = copy.deepcopy(tiny)
    build_model(backbone, "lora")  # build_model copies again: inject into this one directly
    QPeftModel.build(backbone, TemplateConfig(**TINY_TEMPLATE), AdapterConfig(method="lora"))
    with pytest.raises(ValueError, match="already carries peft layers"):
        QPeftModel.build(backbone, TemplateConfig(**TINY_TEMPLATE), AdapterConfig(method="lora"))


def test_unknown_target_modules_are_named(tiny):
    with pytest.raises(ValueError, match="attn_proj"):
        build_model(tiny, "lora", lora_target_modules=["attn_proj"])
