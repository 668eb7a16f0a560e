"""E' as frozen E plus a sparse delta: same scores as a dense E', only its rows train and
are saved, and a saved adapter reloads to the same scores."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from qpeft.adapters import adapter_class
from qpeft.loading.checkpoint import WEIGHTS_NAME, load_adapter, save_adapter
from qpeft.scoring.scorer import score_pairs
from tests.conftest import build_model

QUERIES = ["what is flow", "heat of wing", "boundary layer"]
DOCS = ["wing flow heat alpha beta", "layer of boundary gamma", "delta epsilon zeta flow"]


def ids_of(tiny, words: str) -> torch.Tensor:
    return torch.tensor(tiny.tokenizer(words, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("method", ["qpeft_a", "qpeft_r"])
def test_sparse_delta_scores_equal_a_dense_table_with_the_same_weights(tiny, method):
    from qpeft.scoring.model import QPeftModel

    rows = ids_of(tiny, " ".join(QUERIES) + " hints:")
    base = build_model(tiny, method, **({"dropout": 0.0} if method == "qpeft_a" else {}))
    sparse = QPeftModel.build(base.backbone, base.template.config, base.adapter.config, rows)
    sparse.adapter.load_state_dict(
        {k: v for k, v in base.adapter.state_dict().items() if not k.startswith("embed.")},
        strict=False,
    )
    with torch.no_grad():
        sparse.adapter.embed.delta.normal_(std=0.5)
    assert sparse.adapter.embed.delta.shape[0] == len(set(rows.tolist())) < tiny.vocab_size
    dense = copy.copy(sparse)
    dense_adapter = copy.deepcopy(sparse.adapter)
    dense_adapter.embed = nn.Embedding.from_pretrained(sparse.adapter.embed.dense_weight())
    dense.adapter = dense_adapter
    expected = score_pairs(dense, QUERIES, DOCS)
    assert score_pairs(sparse, QUERIES, DOCS) == pytest.approx(expected, abs=1e-6)


def test_only_reached_rows_get_gradients_and_are_saved(tiny, tmp_path):
    from qpeft.scoring.model import QPeftModel

    rows = ids_of(tiny, "what is flow heat of wing boundary layer hints:")
    base = build_model(tiny, "qpeft_a", dropout=0.0)
    model = QPeftModel.build(base.backbone, base.template.config, base.adapter.config, rows)
    model.adapter.train()
    with torch.no_grad():
        model.adapter.gate.weight.fill_(0.5)  # a closed gate lets no gradient reach E'
    loss = -model(model.template.collate(model.encode(QUERIES, DOCS), share_prefix=False)).sum()
    loss.backward()
    grad = model.adapter.embed.delta.grad
    assert grad.shape == (len(set(rows.tolist())), tiny.hidden_size) and grad.abs().sum() > 0
    with torch.no_grad():
        model.adapter.embed.delta.add_(torch.randn_like(grad) * 0.1)
    directory = save_adapter(model, tmp_path / "adapter")
    tensors = load_file(str(directory / WEIGHTS_NAME))
    assert tensors["embed.delta"].shape == grad.shape and "embed.weight" not in tensors
    assert torch.equal(tensors["embed.ids"], model.adapter.embed.ids.cpu())
    reloaded = load_adapter(directory, model.backbone)
    model.adapter.eval()
    assert score_pairs(reloaded, QUERIES, DOCS) == pytest.approx(
        score_pairs(model, QUERIES, DOCS), abs=1e-5
    )


def test_trainable_rows_per_method(tiny):
    model = build_model(tiny, "qpeft_r")
    template = model.template
    queries = template.tokenize_queries(["what is flow"])
    docs = template.tokenize_docs(["alpha beta"])
    a = set(adapter_class("qpeft_a").trainable_token_ids(template, queries, docs))
    r = set(adapter_class("qpeft_r").trainable_token_ids(template, queries, docs))
    assert set(queries[0]) | set(template.hint_prefix_ids) <= a
    assert not set(docs[0]) & a  # Q-PEFT-A never looks documents up in E'
    assert a | set(docs[0]) | set(template.prompt_ids) <= r
    assert adapter_class("soft_prompt").trainable_token_ids(template, queries, docs) is None
