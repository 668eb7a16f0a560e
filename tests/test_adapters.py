import pytest
import torch

from qpeft.config import LossConfig
from qpeft.lm.template import Segment
from qpeft.methods import METHODS
from qpeft.scoring.model import assemble_inputs, log_likelihood
from qpeft.training.losses import TrainingGroup, group_pairs, ranking_loss
from tests.conftest import build_model


def token_id(tiny, word):
    return tiny.tokenizer.convert_tokens_to_ids(word)


@pytest.mark.parametrize("method", list(METHODS))
def test_only_adapter_parameters_get_gradients(tiny, method):
    model = build_model(tiny, method, k=3)
    batch = model.template.collate(
        model.encode(["what is flow", "heat"], ["wing flow heat", "layer"])
    )
    loss = -log_likelihood(model, batch).mean()
    if method == "zero_shot":
        assert not loss.requires_grad and model.adapter.num_trainable_parameters() == 0
        return
    loss.backward()
    assert all(p.grad is None for p in tiny.model.parameters())
    assert all(not p.requires_grad for p in tiny.model.parameters())
    assert all(p.grad is not None for p in model.adapter.parameters() if p.requires_grad)
    assert model.adapter.num_trainable_parameters() > 0


def test_trainable_counts_match_the_method(tiny):
    d, v = tiny.hidden_size, tiny.vocab_size
    mlp = 2 * (d * d + d)
    counts = {m: build_model(tiny, m).adapter.num_trainable_parameters() for m in METHODS}
    prompt_len = len(build_model(tiny, "zero_shot").template.prompt_ids)
    assert counts["zero_shot"] == 0
    assert counts["soft_prompt"] == prompt_len * d
    config = tiny.model.config
    gate = config.num_hidden_layers * config.num_attention_heads  # one per layer and head
    assert counts["qpeft_r"] == v * d + mlp + gate
    assert counts["qpeft_a"] == v * d + mlp + 4 * d * d + 4 * d + gate  # + attention in/out
    # LoRA rank 8 on q_proj (d -> d) and v_proj (d -> kv heads x head dim) of every layer
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    assert counts["lora"] == config.num_hidden_layers * 8 * ((d + d) + (d + kv))


def crafted_r(tiny, **kw):
    """Frozen embeddings where 'beta' is close to 'alpha' and 'gamma' less so."""
    model = build_model(tiny, "qpeft_r", k=2, **kw)
    emb = tiny.input_embeddings.weight
    saved = emb.detach().clone()
    a, b, g = (token_id(tiny, w) for w in ("alpha", "beta", "gamma"))
    with torch.no_grad():
        emb[b] = saved[a] + 0.05 * saved[b]
        emb[g] = saved[a] + 0.6 * saved[g]  # E' = E + delta (zero) follows
    return model, saved


def select(model, query, doc):
    batch = model.template.collate(model.encode([query], [doc]))
    frozen = model.backbone.input_embeddings(batch.input_ids)
    ids, found = model.adapter.select(batch, frozen)
    return model.backbone.tokenizer.convert_ids_to_tokens(ids[0][found[0]].tolist())


def test_qpeft_r_selects_expected_tokens(tiny):
    model, saved = crafted_r(tiny)
    try:
        # 'alpha' itself scores 1.0 (cosine with itself); repeats are kept once; <s> is special.
        assert select(model, "alpha", "theta gamma beta beta alpha iota") == ["alpha", "beta"]
        model.adapter.config.drop_query_tokens = True
        assert select(model, "alpha", "theta gamma beta beta alpha iota") == ["beta", "gamma"]
    finally:
        with torch.no_grad():
            tiny.input_embeddings.weight.copy_(saved)


def test_qpeft_r_stopwords_and_too_few_tokens(tiny):
    model, saved = crafted_r(tiny, stopwords=["beta"])
    try:
        assert select(model, "alpha", "gamma beta alpha") == ["alpha", "gamma"]
    finally:
        with torch.no_grad():
            tiny.input_embeddings.weight.copy_(saved)
    # More slots than distinct non-special tokens: missing hints are hidden from attention.
    model = build_model(tiny, "qpeft_r", k=40)
    batch = model.template.collate(model.encode(["alpha"], ["beta"]))
    _, mask = assemble_inputs(model, batch)
    hint_visible = mask[batch.segments == Segment.HINT]
    assert 0 < hint_visible.sum() < hint_visible.numel()


def test_qpeft_a_ignores_masked_keys(tiny):
    model = build_model(tiny, "qpeft_a")
    model.adapter.eval()
    batch = model.template.collate(
        model.encode(["what is flow", "heat"], ["wing flow heat boundary layer", "layer"])
    )
    frozen = tiny.input_embeddings(batch.input_ids).detach()
    out, _, _ = model.adapter.query_dependent(batch, frozen)
    masked = (
        (batch.segments == Segment.PAD)
        | (batch.segments == Segment.LABEL)
        | (batch.segments == Segment.HINT)
    )
    assert masked[1].any() and (batch.segments[1] == Segment.PAD).any()
    changed = frozen.clone()
    changed[masked] = torch.randn_like(changed[masked]) * 10
    out2, _, _ = model.adapter.query_dependent(batch, changed)
    assert torch.allclose(out, out2, atol=1e-6)
    changed = frozen.clone()
    doc = batch.segments == Segment.DOC
    changed[doc] = torch.randn_like(changed[doc])
    out3, _, _ = model.adapter.query_dependent(batch, changed)
    assert not torch.allclose(out, out3, atol=1e-3)  # the unmasked keys do matter


@pytest.mark.parametrize("method", ["soft_prompt", "qpeft_r", "qpeft_a"])
def test_optimizer_steps_lower_the_loss(tiny, method):
    model = build_model(tiny, method, k=3, seed=1)
    groups = [
        TrainingGroup(
            "q1", "wing flow", ("d1", "wing flow over the wing"), [("n1", "heat of the layer")]
        ),
        TrainingGroup(
            "q2",
            "boundary layer",
            ("d2", "the boundary layer is thin"),
            [("n2", "alpha beta gamma")],
        ),
        TrainingGroup("q3", "heat", ("d3", "heat and heat"), [("n3", "wing of flow")]),
    ]
    pairs = group_pairs(groups, in_batch_negatives=1)
    batch = model.template.collate(model.encode(pairs.queries, pairs.docs))
    config = LossConfig(margin=1.0)
    params = [p for p in model.adapter.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-2)
    losses = []
    for _ in range(10):
        nll = -log_likelihood(model, batch)
        loss = ranking_loss(nll[pairs.index], pairs.valid, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_untrained_hint_block_is_the_words_it_is_built_from(tiny):
    """The MLP's output layer starts at zero (residual), so before training Q-PEFT-R's
    hints are exactly E' of "hints:", the chosen document tokens and the suffix: text the
    LM can read, not random vectors."""
    model = build_model(tiny, "qpeft_r", k=2)
    batch = model.template.collate(model.encode(["what is flow"], ["wing flow heat"]))
    frozen = model.backbone.input_embeddings(batch.input_ids)
    ids, found = model.adapter.select(batch, frozen)
    block = model.adapter.hints(batch, frozen)
    words = [*model.template.hint_prefix_ids, *ids[0].tolist(), *model.template.hint_suffix_ids]
    expected = tiny.input_embeddings(torch.tensor(words))
    assert found.all()
    assert torch.allclose(block.vectors[0], expected)


def test_untrained_attention_hint_is_a_mix_of_document_embeddings(tiny):
    """Q-PEFT-A starts with identity value/output projections: with a one-token document
    each query token's hint is that token's embedding."""
    model = build_model(tiny, "qpeft_a", dropout=0.0)
    model.adapter.eval()
    batch = model.template.collate(model.encode(["what is flow"], ["wing"]))
    frozen = model.backbone.input_embeddings(batch.input_ids)
    qd, present, _ = model.adapter.query_dependent(batch, frozen)
    wing = tiny.input_embeddings(torch.tensor(token_id(tiny, "wing")))
    assert present[0].sum() == 3
    assert torch.allclose(qd[0], wing.expand(3, -1), atol=1e-6)


def test_untrained_attention_hint_is_the_document_token_matching_the_query_token(tiny):
    """Q-PEFT-A's query/key projections start as a sharp identity: a query word that the
    document contains gets that word's embedding as its hint, not a blur of the document."""
    model = build_model(tiny, "qpeft_a", dropout=0.0)
    model.adapter.eval()
    doc = "wing flow heat boundary layer"
    batch = model.template.collate(model.encode(["flow heat"], [doc]))
    frozen = model.backbone.input_embeddings(batch.input_ids)
    qd, _, _ = model.adapter.query_dependent(batch, frozen)
    document = tiny.input_embeddings(torch.tensor([token_id(tiny, w) for w in doc.split()]))
    for hint, word in zip(qd[0, -2:], ["flow", "heat"], strict=True):
        nearest = torch.cdist(hint[None], document).argmin().item()
        assert doc.split()[nearest] == word
        own = tiny.input_embeddings(torch.tensor(token_id(tiny, word)))
        assert torch.nn.functional.cosine_similarity(hint, own, dim=0) > 0.99


@pytest.mark.parametrize("method", ["qpeft_a", "qpeft_r"])
def test_adapters_read_document_tokens_only(tiny, method):
    """<bos>, the prompt and the template's words are the same for every document: they
    are masked out of the QD module's keys, so Q-PEFT-R never picks them as hints and
    Q-PEFT-A's hints do not change when they do."""
    model = build_model(tiny, method, k=5, dropout=0.0)
    model.adapter.eval()
    batch = model.template.collate(model.encode(["what is flow"], ["wing flow"]))
    frozen = model.backbone.input_embeddings(batch.input_ids)
    if method == "qpeft_r":
        ids, found = model.adapter.select(batch, frozen)
        chosen = set(tiny.tokenizer.convert_ids_to_tokens(ids[0][found[0]].tolist()))
        assert chosen == {"wing", "flow"}  # k=5, but only the document's two words qualify
        return
    qd, _, _ = model.adapter.query_dependent(batch, frozen)
    outside_doc = batch.segments != Segment.DOC
    noisy = frozen + torch.randn_like(frozen) * outside_doc.unsqueeze(-1)
    again, _, _ = model.adapter.query_dependent(batch, noisy)
    assert torch.allclose(qd, again)


def test_an_empty_document_gives_finite_attention_hints(tiny):
    model = build_model(tiny, "qpeft_a", dropout=0.0)
    batch = model.template.collate(model.encode(["what is flow", "heat"], ["", "wing"]))
    assert torch.isfinite(log_likelihood(model, batch)).all()
