"""The packaged Gemma 3 270M, offline: its label and template with the real tokenizer, and
scores that do not depend on batching or on the shared-prefix cache (slow: converts the
GGUF once, about 40 s)."""

import pytest
import torch

from qpeft.config import AdapterConfig, ModelConfig, TemplateConfig
from qpeft.lm.backbone import load_backbone
from qpeft.lm.template import Segment
from qpeft.scoring.model import QPeftModel
from qpeft.scoring.scorer import score_pairs
from tests.test_smollm2 import PASSAGES, QUERIES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def gemma():
    return load_backbone(ModelConfig(name="gemma3-270m"))


def test_label_is_bos_query_eos_and_special_tokens_are_kept_out_of_hints(gemma):
    tokenizer = gemma.tokenizer
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<bos>", 2)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<eos>", 1)
    assert gemma.vocab_size == 262_144 and gemma.hidden_size == 640
    model = QPeftModel.build(gemma, TemplateConfig(), AdapterConfig(method="qpeft_r", k=5))
    query, doc = QUERIES["aero"], PASSAGES["aero"]
    layout = model.encode([query], [doc])[0]

    def tokens(segment: Segment) -> list[int]:
        pairs = zip(layout.input_ids, layout.segments, strict=True)
        return [t for t, s in pairs if s == segment]

    labels = tokens(Segment.LABEL)
    assert labels[0] == 2 and labels[-1] == 1
    assert tokenizer.decode(labels[1:-1]) == query
    # Tokenized joined to "Passage: ": the prefix ends at ":", and the space after it is the
    # document's first word boundary ("▁Boundary"), not a lone "▁" token.
    assert tokenizer.convert_ids_to_tokens(model.template.passage_prefix_ids)[-1] == ":"
    assert tokenizer.decode(tokens(Segment.DOC)) == " " + doc
    assert tokenizer.convert_ids_to_tokens(tokens(Segment.DOC))[0] == "▁Boundary"
    banned = set(model.adapter.banned_ids.tolist())
    assert {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id} <= banned
    batch = model.template.collate([layout])
    ids, found = model.adapter.select(batch, gemma.input_embeddings(batch.input_ids))
    assert found.all() and not set(ids[0].tolist()) & banned


def test_scores_do_not_depend_on_batching_or_prefix_reuse(gemma):
    model = QPeftModel.build(gemma, TemplateConfig(), AdapterConfig(method="zero_shot"))
    queries = [QUERIES["aero"]] * 4
    docs = list(PASSAGES.values())
    shared = score_pairs(model, queries, docs, batch_size=4, share_prefix=True)
    full = score_pairs(model, queries, docs, batch_size=4, share_prefix=False)
    alone = score_pairs(model, queries, docs, batch_size=1, share_prefix=False)
    assert torch.allclose(torch.tensor(shared), torch.tensor(full), atol=1e-4)
    assert torch.allclose(torch.tensor(alone), torch.tensor(full), atol=1e-4)
    assert max(range(4), key=lambda i: full[i]) == 0  # the aerodynamics passage wins


@pytest.mark.parametrize("method", ["qpeft_a", "qpeft_r"])
def test_an_untrained_gated_adapter_scores_as_zero_shot_on_gemma(gemma, method):
    """Gemma 3 shares one key/value head among its query heads and alternates sliding-window
    layers: the gated attention must handle both and stay exact while the gate is shut."""
    zero_shot = QPeftModel.build(gemma, TemplateConfig(), AdapterConfig(method="zero_shot"))
    gated = QPeftModel.build(gemma, TemplateConfig(), AdapterConfig(method=method, k=5)).eval()
    assert gemma.decoder.config.num_key_value_heads < gemma.decoder.config.num_attention_heads
    queries = [QUERIES["aero"]] * 4
    docs = list(PASSAGES.values())
    expected = torch.tensor(score_pairs(zero_shot, queries, docs, batch_size=4))
    got = torch.tensor(score_pairs(gated, queries, docs, batch_size=4))
    assert torch.allclose(got, expected, atol=1e-4)
