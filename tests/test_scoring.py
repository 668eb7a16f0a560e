import pytest
import torch

from qpeft.methods import METHODS
from qpeft.scoring.model import log_likelihood
from qpeft.scoring.scorer import score_batch, score_pairs
from tests.conftest import build_model

QUERIES = ["what is wing flow", "heat", "boundary layer of flow and heat", "alpha beta"]
DOCS = [
    "wing flow of heat boundary layer",
    "heat " * 30,
    "what",
    "gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi",
]


@pytest.mark.parametrize("method", list(METHODS))
def test_score_does_not_depend_on_batch(tiny, method):
    model = build_model(tiny, method, k=3)
    together = score_pairs(model, QUERIES, DOCS, batch_size=4)
    alone = [
        score_pairs(model, [q], [d], batch_size=1)[0] for q, d in zip(QUERIES, DOCS, strict=True)
    ]
    reversed_batch = score_pairs(model, QUERIES[::-1], DOCS[::-1], batch_size=4)[::-1]
    assert max(abs(a - b) for a, b in zip(together, alone, strict=True)) < 1e-4
    assert max(abs(a - b) for a, b in zip(together, reversed_batch, strict=True)) < 1e-4


def test_zero_shot_equals_plain_full_vocabulary_computation(tiny):
    model = build_model(tiny, "zero_shot")
    layout = model.encode([QUERIES[0]], [DOCS[0]])[0]
    ids = torch.tensor([layout.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(tiny.model(ids).logits[0], dim=-1)
    n_label = len(layout.query_ids) + 2
    targets = ids[0, -n_label:]
    expected = logp[-n_label - 1 : -1].gather(-1, targets[:, None]).mean().item()
    assert score_pairs(model, [QUERIES[0]], [DOCS[0]])[0] == pytest.approx(expected, abs=1e-5)


def test_lm_head_runs_only_at_label_positions(tiny):
    model = build_model(tiny, "qpeft_a")
    batch = model.template.collate(model.encode(QUERIES, DOCS))
    seen = []
    handle = tiny.lm_head.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        score_batch(model, batch)
    finally:
        handle.remove()
    labels = [len(model.template.tokenize_queries([q])[0]) + 2 for q in QUERIES]
    # One contiguous matrix of every row's real label positions, no padding among them.
    assert seen == [(sum(labels), tiny.hidden_size)]
    assert len(set(labels)) > 1 and max(labels) < batch.input_ids.shape[1]


def test_inference_mode_for_scoring_and_gradients_for_training(tiny):
    model = build_model(tiny, "qpeft_a")
    with torch.no_grad():
        model.adapter.gate.weight.fill_(0.1)  # a shut gate in eval mode reads no hints
    batch = model.template.collate(model.encode(QUERIES, DOCS))
    model.adapter.eval()  # no attention dropout: both paths must give the same numbers
    scored = score_batch(model, batch)
    assert scored.is_inference() and not scored.requires_grad
    trained = log_likelihood(model, batch)
    assert trained.requires_grad and trained.shape == (4,)
    assert torch.allclose(scored, trained.detach(), atol=1e-6)


@pytest.mark.parametrize("method", ["zero_shot", "qpeft_r", "qpeft_a", "soft_prompt", "lora"])
def test_shared_prefix_cache_equals_full_pass(tiny, method):
    model = build_model(tiny, method, k=3)
    model.adapter.eval()
    batch = model.template.collate(model.encode(QUERIES, DOCS))
    assert batch.shared_prefix > 0
    cached = score_batch(model, batch)
    full = score_batch(model, model.template.collate(model.encode(QUERIES, DOCS), False))
    assert torch.allclose(cached, full, atol=1e-5)


def test_empty_input_scores_nothing(tiny):
    assert score_pairs(build_model(tiny, "qpeft_a"), [], []) == []
