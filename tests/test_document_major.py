"""Document-major scoring: each document's prefix computed once, every pair's score and
every gradient equal to the plain per-pair pass."""

import pytest
import torch

from qpeft.config import ConfigError, LossConfig, ScoringConfig, TemplateConfig, validate
from qpeft.lm.template import Segment
from qpeft.scoring.mixed import score_mixed
from qpeft.scoring.model import log_likelihood, prefix_bytes_per_token
from qpeft.scoring.scorer import document_batches, score_pairs
from qpeft.training.losses import ranking_loss
from qpeft.training.losses.groups import TrainingGroup, group_pairs
from tests.conftest import build_model, moved_off_start

# Documents shared by queries of different lengths, documents of mixed lengths, an empty
# document (Q-PEFT-R finds no token for its hints: an empty hint block) and a long one.
DOCS = ["wing flow of heat boundary layer", "heat " * 30, "", "what", "alpha beta gamma"]
QUERIES = ["what is wing flow", "heat", "boundary layer of flow and heat", "alpha beta", "mu"]
PAIRS = [(q, d) for q in QUERIES for d in DOCS if (len(q) + len(d)) % 3 != 1]
METHODS = ["zero_shot", "qpeft_r", "qpeft_a", "soft_prompt", "lora"]


def per_pair(model, pairs):
    """The plain scorer: one pair at a time, no prefix reused."""
    return [score_pairs(model, [q], [d], 1, share_prefix=False)[0] for q, d in pairs]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("gate", [True, False])
def test_scores_equal_the_per_pair_pass(tiny, method, gate):
    model = moved_off_start(build_model(tiny, method, k=3, hint_gate=gate))
    queries, docs = zip(*PAIRS, strict=True)
    expected = per_pair(model, PAIRS)
    for batch_size in (3, 16):
        got = score_pairs(model, queries, docs, batch_size, share_prefix=True)
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-5


@pytest.mark.parametrize("method", ["qpeft_r", "qpeft_a"])
def test_prefix_hints_keep_the_per_pair_layout(tiny, method):
    model = moved_off_start(build_model(tiny, method, k=3, template={"hint_position": "prefix"}))
    layouts = model.encode(list(QUERIES), [DOCS[0]] * len(QUERIES))
    assert {layout.document_prefix for layout in layouts} == {len(model.template.shared_prefix_ids)}
    queries, docs = zip(*PAIRS, strict=True)
    got = score_pairs(model, queries, docs, 4, share_prefix=True)
    assert max(abs(a - b) for a, b in zip(got, per_pair(model, PAIRS), strict=True)) < 1e-5


def test_each_document_prefix_is_computed_once_per_batch(tiny):
    model = build_model(tiny, "zero_shot")
    rows_seen = []
    layer = tiny.decoder.layers[0]
    handle = layer.register_forward_hook(lambda m, i, o: rows_seen.append(tuple(i[0].shape[:2])))
    try:
        queries, docs = zip(*PAIRS, strict=True)
        score_pairs(model, queries, docs, 64, share_prefix=True)
    finally:
        handle.remove()
    distinct = len(set(docs))
    # One row per distinct document's prefix, then one row per pair's suffix.
    assert [rows for rows, _ in rows_seen] == [distinct, len(PAIRS)]


def test_batches_keep_documents_together_within_the_budget(tiny):
    model = build_model(tiny, "qpeft_a")
    queries, docs = zip(*PAIRS, strict=True)
    layouts = model.encode(list(queries), list(docs))
    longest = max(layout.document_prefix for layout in layouts)
    budget = 3 * longest
    batches = list(document_batches(layouts, 8, budget))
    assert sorted(i for batch in batches for i in batch) == list(range(len(layouts)))
    for batch in batches:
        assert len(batch) * max(layouts[i].document_prefix for i in batch) <= budget
    # A document's pairs are consecutive: it spans at most two batches.
    for doc in set(docs):
        holding = [b for b, batch in enumerate(batches) if any(docs[i] == doc for i in batch)]
        assert holding == list(range(holding[0], holding[0] + len(holding)))
        assert len(holding) <= 1 + docs.count(doc) // 3


@pytest.mark.parametrize("method", ["qpeft_r", "qpeft_a", "soft_prompt", "lora"])
def test_training_gradients_equal_the_full_pass(tiny, method):
    model = moved_off_start(build_model(tiny, method, k=3, dropout=0.0))
    model.adapter.train()
    queries, docs = zip(*PAIRS[:8], strict=True)
    layouts = model.encode(list(queries), list(docs))

    def gradients(share_prefix: bool) -> list[torch.Tensor]:
        model.adapter.zero_grad()
        batch = model.template.collate(layouts, share_prefix)
        log_likelihood(model, batch).sum().backward()
        return [p.grad.clone() for p in model.adapter.parameters() if p.grad is not None]

    split, full = gradients(True), gradients(False)
    assert len(split) == len(full) > 0
    for a, b in zip(split, full, strict=True):
        # 1e-5 of the gradient's own scale: sums over several pairs round differently.
        assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())


def test_training_backpropagates_through_the_suffix_only(tiny):
    """Q-PEFT's trained weights never reach the document: its prefix runs without autograd."""
    model = moved_off_start(build_model(tiny, "qpeft_a", dropout=0.0))
    model.adapter.train()
    batch = model.template.collate(model.encode(["what is flow", "heat"], DOCS[:2]))
    grad_rows = []
    handle = tiny.decoder.layers[0].register_forward_hook(
        lambda m, i, o: grad_rows.append((i[0].shape[1], o[0].requires_grad))
    )
    try:
        log_likelihood(model, batch)
    finally:
        handle.remove()
    suffix = batch.input_ids.shape[1] - batch.document_prefix
    assert grad_rows[-1] == (suffix, True)
    assert all(not needs for _, needs in grad_rows[:-1])


def test_mixed_adapters_share_each_document_prefix(tiny):
    gated = moved_off_start(build_model(tiny, "qpeft_a", seed=1))
    topk = moved_off_start(build_model(tiny, "qpeft_r", seed=2, k=3))
    zero = build_model(tiny, "zero_shot")
    soft = moved_off_start(build_model(tiny, "soft_prompt", seed=3))
    models = [gated, topk, zero, soft]
    queries, docs = zip(*PAIRS, strict=True)
    owners = [i % len(models) for i in range(len(PAIRS))]
    mixed = score_mixed(models, queries, docs, owners, 32, share_prefix=True)
    for index, model in enumerate(models):
        rows = [i for i, owner in enumerate(owners) if owner == index]
        alone = per_pair(model, [PAIRS[i] for i in rows])
        assert max(abs(mixed[i] - a) for i, a in zip(rows, alone, strict=True)) < 1e-5


def test_a_budget_smaller_than_one_prefix_is_refused_at_config_time():
    from pipelines.rerank import RerankConfig

    cfg = RerankConfig(template=TemplateConfig(max_length=300))
    cfg.scoring = ScoringConfig(prefix_token_budget=200)
    with pytest.raises(ConfigError, match=r"scoring\.prefix_token_budget: 200 tokens"):
        validate(cfg)


def test_prefix_bytes_follow_the_shapes(tiny):
    lm = tiny.decoder.config
    heads = getattr(lm, "num_key_value_heads", lm.num_attention_heads)
    head_dim = lm.hidden_size // lm.num_attention_heads
    assert prefix_bytes_per_token(tiny) == lm.num_hidden_layers * 2 * heads * head_dim * 4


def test_a_long_document_is_cut_once_the_same_way_for_every_query(tiny):
    model = build_model(tiny, "qpeft_a", template={"max_doc_tokens": 6})
    layouts = model.encode(["heat", "what is wing flow of heat"], ["alpha " * 20] * 2)
    assert layouts[0].document_key() == layouts[1].document_key()
    assert all(layout.doc_truncated and layout.doc_tokens == 6 for layout in layouts)
    doc = [s for s in layouts[0].segments[: layouts[0].document_prefix] if s == Segment.DOC]
    assert len(doc) == 6


def test_the_loss_over_document_major_batches_is_the_same_number(tiny):
    model = moved_off_start(build_model(tiny, "qpeft_r", k=3))
    groups = [
        TrainingGroup(
            "q1", "what is wing flow", ("d1", DOCS[0]), [("d2", DOCS[1]), ("d3", DOCS[4])]
        ),
        TrainingGroup("q2", "heat", ("d2", DOCS[1]), [("d1", DOCS[0])]),
    ]
    pairs = group_pairs(groups, 1)
    layouts = model.encode(pairs.queries, pairs.docs)
    values = []
    for share in (True, False):
        nll = -log_likelihood(model, model.template.collate(layouts, share))
        values.append(ranking_loss(nll[pairs.index], pairs.valid, LossConfig()).item())
    assert values[0] == pytest.approx(values[1], abs=1e-5)


def test_micro_batches_count_the_tokens_back_propagated_through(tiny):
    """Q-PEFT back-propagates through the part after the document only, so a token budget
    packs more of its pairs; the soft prompt's prefix is trained, so it counts them all."""
    from qpeft.training.loop import plan_micro_batches

    groups = [
        TrainingGroup(f"q{i}", QUERIES[i], (f"p{i}", DOCS[i]), [("n", DOCS[(i + 1) % 5])])
        for i in range(4)
    ]
    pairs = group_pairs(groups, 1)
    for method, fewer in (("qpeft_a", True), ("soft_prompt", False)):
        model = build_model(tiny, method)
        layouts = model.encode(pairs.queries, pairs.docs)
        budget = max(len(x.input_ids) for x in layouts) * 3
        by_pair = plan_micro_batches(layouts, pairs, budget, True)
        by_backprop = plan_micro_batches(layouts, pairs, budget, True, model.backprop_tokens)
        assert (len(by_backprop) < len(by_pair)) == fewer
