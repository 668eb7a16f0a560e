"""`model.dtype: auto` follows what the hardware multiplies natively, and in bf16 the
adapter's trainable weights stay fp32 (mixed precision)."""

import copy

import pytest
import torch

from qpeft.config import AdapterConfig, ConfigError, ModelConfig, TemplateConfig, from_dict
from qpeft.lm.backbone import tiny_backbone
from qpeft.lm.hardware import Hardware, resolve_dtype
from qpeft.methods import trainable_methods
from qpeft.scoring.model import QPeftModel, log_likelihood
from tests.conftest import TINY_TEMPLATE, WORDS

AVX2 = Hardware("AMD EPYC", frozenset({"avx2", "fma"}), None)
AVX512_BF16 = Hardware("AMD EPYC 9R14", frozenset({"avx2", "avx512f", "avx512_bf16"}), None)
AMX = Hardware("Intel Xeon", frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_int8"}), None)


def test_auto_is_bf16_only_where_the_cpu_multiplies_in_it(monkeypatch):
    monkeypatch.delenv("QPEFT_AUTO_DTYPE")  # the suite pins auto to float32 (conftest.py)
    assert from_dict(ModelConfig, {}).dtype == "auto"
    assert resolve_dtype("auto", "cpu", AVX2) == "float32"
    assert resolve_dtype("auto", "cpu", AVX512_BF16) == "bfloat16"
    assert resolve_dtype("auto", "cpu", AMX) == "bfloat16"
    assert resolve_dtype("float32", "cpu", AMX) == "float32"  # an explicit choice stays
    monkeypatch.setenv("QPEFT_AUTO_DTYPE", "bfloat16")
    assert resolve_dtype("auto", "cpu", AVX2) == "bfloat16"
    monkeypatch.setenv("QPEFT_AUTO_DTYPE", "bf16")
    with pytest.raises(ConfigError, match=r"\$QPEFT_AUTO_DTYPE=bf16"):
        resolve_dtype("auto", "cpu", AVX2)
    assert AVX2.describe().endswith("(flags: avx2; no avx512f avx512_bf16 amx_bf16 amx_int8)")


@pytest.fixture(scope="module")
def tiny_bf16():
    backbone = tiny_backbone(WORDS)
    backbone.model.to(torch.bfloat16)
    return backbone


@pytest.mark.parametrize("method", trainable_methods())
def test_in_bf16_the_adapter_trains_in_fp32(tiny_bf16, method):
    backbone = copy.deepcopy(tiny_bf16)  # LoRA goes into the LM itself
    model = QPeftModel.build(
        backbone, TemplateConfig(**TINY_TEMPLATE), AdapterConfig(method=method, k=3)
    )
    trainable = [p for p in model.adapter.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable), method
    batch = model.template.collate(model.encode(["what is flow"], ["wing flow heat"]))
    nll = -log_likelihood(model, batch)
    assert nll.dtype == torch.float32 and torch.isfinite(nll).all()
    nll.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)
