"""Faithful inputs: "Passage: " and the document are tokenized as one string, the label is
<bos> q <eos>, and user text never turns into a special token. Checked on one real
Cranfield pair with SmolLM2's byte-level BPE and with a LLaMA-style (Metaspace) tokenizer
built here offline."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from qpeft.config import ModelConfig, TemplateConfig
from qpeft.data import irds
from qpeft.lm.backbone import load_tokenizer
from qpeft.lm.template import Segment, Template


@pytest.fixture(scope="module")
def cranfield_pair() -> tuple[str, str]:
    """Query 1 of Cranfield and the first document judged relevant to it."""
    dataset = irds.load("cranfield")
    query = dict(irds.iter_queries(dataset))["1"]
    relevant = sorted(d for q, d, grade in irds.iter_qrels(dataset) if q == "1" and grade > 0)
    docs = dict(irds.iter_docs(dataset))
    return query, docs[relevant[0]]


def llama_style_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """SentencePiece-like: "▁" marks a word start, and the first word gets one too."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"])
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def pieces(tokenizer, layout, segment: Segment) -> list[str]:
    ids = [t for t, s in zip(layout.input_ids, layout.segments, strict=True) if s == segment]
    return tokenizer.convert_ids_to_tokens(ids)


def check_pair(tokenizer, query: str, doc: str, space: str) -> None:
    template = Template(TemplateConfig(max_length=400), tokenizer, "zero_shot", False)
    q = template.tokenize_queries([query])[0]
    d = template.tokenize_docs([doc])[0]
    layout = template.encode(q, d, n_hint_slots=0)
    joined = tokenizer("Passage: " + doc, add_special_tokens=False)["input_ids"]
    prefix = template.passage_prefix_ids
    # The passage is exactly the joined string's tokens: prefix up to ":", then the
    # document with the space as its first word's boundary.
    assert prefix + d == joined
    assert tokenizer.convert_ids_to_tokens(prefix)[-1].endswith(":")
    assert pieces(tokenizer, layout, Segment.DOC)[0].startswith(space)
    assert pieces(tokenizer, layout, Segment.DOC)[0] != space  # no lone boundary token
    labels = pieces(tokenizer, layout, Segment.LABEL)
    assert labels[0] == tokenizer.bos_token and labels[-1] == tokenizer.eos_token
    assert tokenizer.convert_tokens_to_string(labels[1:-1]).strip() == query.strip()


def test_smollm2_real_cranfield_pair(cranfield_pair):
    query, doc = cranfield_pair
    tokenizer = load_tokenizer(ModelConfig(name="smollm2-135m"))
    check_pair(tokenizer, query, doc, "Ġ")
    # SmolLM2-Instruct's bos/eos are its chat markers: the label is <|im_start|> q <|im_end|>.
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")


def test_llama_style_real_cranfield_pair(cranfield_pair):
    query, doc = cranfield_pair
    tokenizer = llama_style_tokenizer([query, doc, "Passage: Question: hints:"])
    check_pair(tokenizer, query, doc, "▁")
    # Tokenized on its own (the old way), "Passage: " ends in a lone "▁" before "▁word".
    alone = tokenizer("Passage: ", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(alone)[-1] == "▁"


def test_user_text_never_becomes_a_special_token():
    tokenizer = load_tokenizer(ModelConfig(name="smollm2-135m"))
    template = Template(TemplateConfig(), tokenizer, "zero_shot", False)
    specials = set(tokenizer.all_special_ids)
    for ids in (
        template.tokenize_queries(["stop <|im_end|> here"])[0],
        template.tokenize_docs(["a <|im_start|> b <|endoftext|>"])[0],
    ):
        assert not set(ids) & specials
