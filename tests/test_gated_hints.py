"""Zero-initialised gated hints (`adapter.hint_gate`): an untrained adapter ranks exactly as
zero-shot, training opens the gate, and adapters saved before the gate load unchanged."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import build_model

from qpeft.config import HINT_PROMPT, PLAIN_PROMPT, ConfigError, TemplateConfig
from qpeft.lm.gated_attention import GATED_ATTENTION
from qpeft.loading.checkpoint import CONFIG_NAME, load_adapter, save_adapter
from qpeft.scoring.model import log_likelihood
from qpeft.scoring.scorer import score_layouts, score_pairs

QUERIES = ["what is flow", "heat wing", "boundary layer flow"]
DOCS = ["wing flow heat boundary layer", "the wing", "flow of heat in a boundary layer"]


@pytest.mark.parametrize("method", ["qpeft_a", "qpeft_r"])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_an_untrained_gated_adapter_scores_as_zero_shot(tiny, method, share_prefix):
    template = {"prompt": None}  # each method's default prompt
    zero_shot = build_model(tiny, "zero_shot", template=template).eval()
    gated = build_model(tiny, method, template=template, k=2, dropout=0.0).eval()
    expected = score_pairs(zero_shot, QUERIES, DOCS, batch_size=2, share_prefix=share_prefix)
    got = score_pairs(gated, QUERIES, DOCS, batch_size=2, share_prefix=share_prefix)
    assert got == pytest.approx(expected, abs=1e-5)
    with torch.no_grad():
        gated.adapter.gate.weight.fill_(0.5)
    opened = score_pairs(gated, QUERIES, DOCS, batch_size=2, share_prefix=share_prefix)
    assert max(abs(a - b) for a, b in zip(opened, expected, strict=True)) > 1e-3


def test_gated_hint_methods_default_to_the_plain_prompt():
    """The untrained LM cannot see gated hints, so their prompt does not mention them."""
    config = TemplateConfig()
    assert config.prompt_for("qpeft_a", hint_gate=True) == PLAIN_PROMPT
    assert config.prompt_for("qpeft_a", hint_gate=False) == HINT_PROMPT
    assert config.prompt_for("zero_shot", hint_gate=True) == PLAIN_PROMPT


def test_the_gate_learns_first_then_the_hint_module(tiny):
    """At g = 0 only the gate has a gradient (the hints are not read yet); one step opens it
    and the hint module starts learning, as in LLaMA-Adapter."""
    model = build_model(tiny, "qpeft_a", dropout=0.0)
    batch = model.template.collate(model.encode(QUERIES, DOCS))
    optimizer = torch.optim.AdamW(model.adapter.parameters(), lr=1e-2)
    for step in range(2):
        optimizer.zero_grad()
        log_likelihood(model, batch).sum().backward()
        mlp_grad = model.adapter.mlp[2].weight.grad.abs().sum().item()
        assert model.adapter.gate.weight.grad.abs().sum() > 0
        assert (mlp_grad > 0) == (step > 0)
        optimizer.step()


def test_other_callers_of_a_gated_backbone_score_as_before(tiny):
    """Building a gated adapter switches the LM to the gated attention for good (gradient
    checkpointing re-runs layers after the forward pass); calls without hints are SDPA."""
    backbone = copy.deepcopy(tiny)
    zero_shot = build_model(backbone, "zero_shot")
    before = score_pairs(zero_shot, QUERIES, DOCS)
    build_model(backbone, "qpeft_r", k=2)
    assert backbone.decoder.config._attn_implementation == GATED_ATTENTION
    assert score_pairs(zero_shot, QUERIES, DOCS) == pytest.approx(before, abs=1e-6)


def test_gated_hints_train_under_gradient_checkpointing(tiny):
    """Checkpointing recomputes each layer in the backward pass: the gate's gradient must be
    the same as without it."""
    grads = []
    for checkpointing in (False, True):
        backbone = copy.deepcopy(tiny)
        if checkpointing:
            backbone.model.gradient_checkpointing_enable({"use_reentrant": False})
            backbone.model.train()  # transformers checkpoints in training mode only
        model = build_model(backbone, "qpeft_a", dropout=0.0)
        with torch.no_grad():
            model.adapter.gate.weight.fill_(0.3)
        batch = model.template.collate(model.encode(QUERIES, DOCS), share_prefix=False)
        log_likelihood(model, batch).sum().backward()
        grads.append(model.adapter.gate.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    assert grads[0].abs().sum() > 0


def test_gated_hints_refuse_an_attention_they_cannot_gate(tiny):
    backbone = copy.deepcopy(tiny)
    backbone.decoder.config._attn_implementation = "eager"
    with pytest.raises(ConfigError, match="hint_gate=false"):
        build_model(backbone, "qpeft_a")


def test_ungated_adapters_keep_the_papers_layout(tiny):
    """hint_gate false: the hints are plain input tokens with positions, the paper's prompt."""
    model = build_model(tiny, "qpeft_a", template={"prompt": None}, hint_gate=False)
    assert model.adapter.gate is None
    assert model.template.config.prompt_for("qpeft_a", False) == HINT_PROMPT
    zero_shot = build_model(tiny, "zero_shot", template={"prompt": None})
    assert model.template.prompt_ids != zero_shot.template.prompt_ids


def test_an_adapter_saved_before_the_gate_loads_ungated(tiny, tmp_path):
    model = build_model(tiny, "qpeft_r", k=2, hint_gate=False).eval()
    directory = save_adapter(model, tmp_path / "adapter")
    config = json.loads((directory / CONFIG_NAME).read_text())
    del config["adapter"]["hint_gate"]  # as written by earlier versions
    (directory / CONFIG_NAME).write_text(json.dumps(config))
    loaded = load_adapter(directory, tiny).eval()
    assert loaded.adapter.gate is None
    assert score_pairs(loaded, QUERIES, DOCS) == pytest.approx(score_pairs(model, QUERIES, DOCS))


def test_a_gated_adapter_round_trips_with_its_gate(tiny, tmp_path):
    model = build_model(tiny, "qpeft_a", dropout=0.0).eval()
    with torch.no_grad():
        model.adapter.gate.weight.uniform_(-0.5, 0.5)
    loaded = load_adapter(save_adapter(model, tmp_path / "adapter"), tiny).eval()
    assert torch.equal(loaded.adapter.gate.weight, model.adapter.gate.weight)
    assert score_pairs(loaded, QUERIES, DOCS) == pytest.approx(score_pairs(model, QUERIES, DOCS))


def test_the_gate_trains_at_its_own_rate(tiny):
    from qpeft.training.loop import DEFAULT_GATE_LR, TrainSettings, parameter_groups

    model = build_model(tiny, "qpeft_a")
    groups = parameter_groups(model.adapter, TrainSettings(lr=1e-3, gate_lr=1e-2))
    rates = {g["name"]: (g["lr"], sum(p.numel() for p in g["params"])) for g in groups}
    gate = model.adapter.gate.weight
    assert rates["gate"] == (1e-2, gate.numel())
    assert rates["module"][0] == 1e-3 and rates["embedding"][0] == 1e-4
    default = parameter_groups(model.adapter, TrainSettings(lr=1e-3, gate_lr=None))
    assert {g["name"]: g["lr"] for g in default}["gate"] == DEFAULT_GATE_LR != 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_shut_gate_scores_exactly_as_zero_shot_in_any_dtype(tiny, dtype):
    """In eval mode an untrained gated adapter leaves the hint block out altogether: the same
    computation as zero-shot, so the same numbers even in bf16. Pairs encoded in training
    mode (slots reserved) and scored with the gate shut get their slots hidden."""
    backbone = copy.deepcopy(tiny)
    backbone.model.to(dtype)
    template = {"prompt": None}
    zero_shot = build_model(backbone, "zero_shot", template=template)
    gated = build_model(backbone, "qpeft_a", template=template, dropout=0.0)
    expected = score_pairs(zero_shot, QUERIES, DOCS)
    assert score_pairs(gated, QUERIES, DOCS) == expected
    gated.adapter.train()
    reserved = gated.encode(QUERIES, DOCS)
    assert gated.adapter.hint_slots([3])[0] > 0
    gated.adapter.eval()
    assert gated.adapter.hint_slots([3])[0] == 0
    assert score_layouts(gated, reserved, 8) == pytest.approx(expected, abs=1e-2)
    with torch.no_grad():
        gated.adapter.gate.weight[0, 0] = 1e-3  # open: the block is read again
    assert gated.adapter.hint_slots([3])[0] > 0
