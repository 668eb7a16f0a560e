import pytest
import torch

from qpeft.config import ConfigError, TemplateConfig
from qpeft.lm.template import QueryTooLongError, Segment, Template
from tests.conftest import TINY_TEMPLATE


def make(tiny, **kw):
    return Template(TemplateConfig(**{**TINY_TEMPLATE, **kw}), tiny.tokenizer, "qpeft_a", True)


def words(tiny, ids):
    return tiny.tokenizer.convert_ids_to_tokens(ids)


def test_suffix_layout_follows_design(tiny):
    t = make(tiny)
    q, d = t.tokenize_queries(["what is flow"])[0], t.tokenize_docs(["wing flow heat"])[0]
    layout = t.encode(q, d, n_hint_slots=2)
    segs = layout.segments
    assert words(tiny, layout.input_ids[:1]) == ["<s>"]
    prompt = [i for i, s in zip(layout.input_ids, segs, strict=True) if s == Segment.PROMPT]
    assert words(tiny, prompt) == TINY_TEMPLATE["prompt"].split()
    doc_at = segs.index(Segment.DOC)
    hint_at = segs.index(Segment.HINT)
    question_at = layout.input_ids.index(tiny.tokenizer.convert_tokens_to_ids("Question:"))
    assert doc_at < hint_at < question_at
    assert segs.count(Segment.HINT) == 2
    labels = [i for i, s in zip(layout.input_ids, segs, strict=True) if s == Segment.LABEL]
    assert words(tiny, labels) == ["<s>", "what", "is", "flow", "</s>"]
    assert segs[-len(labels) :] == [Segment.LABEL] * len(labels)


def test_prefix_layout_puts_hints_after_prompt(tiny):
    t = make(tiny, hint_position="prefix")
    layout = t.encode([5], [6, 7], n_hint_slots=3)
    segs = layout.segments
    last_prompt = max(i for i, s in enumerate(segs) if s == Segment.PROMPT)
    assert segs[last_prompt + 1 : last_prompt + 4] == [Segment.HINT] * 3
    assert segs.index(Segment.HINT) < segs.index(Segment.DOC)


def test_truncation_cuts_document_never_query(tiny):
    t = make(tiny, max_length=40)
    query = list(range(10, 20))
    doc = list(range(20, 60)) * 3
    layout = t.encode(query, doc, n_hint_slots=4)
    assert len(layout.input_ids) == 40
    assert layout.query_ids == query
    assert layout.doc_truncated and layout.doc_tokens == 40 - t.fixed_length(4, len(query))
    assert layout.input_ids[-len(query) - 1 : -1] == query


def test_max_doc_tokens(tiny):
    t = make(tiny, max_doc_tokens=3)
    assert t.encode([5], [6] * 10, 0).doc_tokens == 3


def test_long_query_policy_keeps_the_first_tokens_skips_or_fails(tiny):
    query = list(range(5, 30))  # 25 tokens
    assert make(tiny, max_query_tokens=8).clip_query(query) == (query[:8], 17)
    assert make(tiny, max_query_tokens=25).clip_query(query) == (query, 0)
    message = r"25 tokens, over template\.max_query_tokens=8"
    for policy in ("skip", "fail"):
        with pytest.raises(QueryTooLongError, match=message):
            make(tiny, max_query_tokens=8, long_queries=policy).clip_query(query)


def test_a_template_without_room_for_a_document_is_refused(tiny):
    t = make(tiny, max_length=30, max_query_tokens=20)
    with pytest.raises(ConfigError, match=r"template\.max_length=30 leaves no room"):
        t.check_room(max_hint_slots=4)
    make(tiny, max_length=60, max_query_tokens=20).check_room(max_hint_slots=4)


def test_collate_left_pads_and_keeps_queries(tiny):
    t = make(tiny)
    a = t.encode([5, 6, 7], [8] * 5, 0)
    b = t.encode([9], [8] * 2, 0)
    batch = t.collate([a, b], share_prefix=False)
    width = len(a.input_ids)
    assert batch.input_ids.shape == (2, width) and batch.shared_prefix == 0
    pad = width - len(b.input_ids)
    assert batch.attention_mask[1, :pad].sum() == 0 and batch.attention_mask[1, pad:].all()
    assert batch.input_ids[1, pad:].tolist() == b.input_ids
    assert batch.query_ids[1, 0] == 9 and batch.query_mask.sum(1).tolist() == [3, 1]


def test_collate_puts_common_prefix_document_prefix_and_suffix_in_columns_of_their_own(tiny):
    t = make(tiny)
    long_doc = t.encode([5, 6, 7], [8] * 5, 0)
    short_doc = t.encode([9], [8] * 2, 0)
    same_doc = t.encode([9, 10, 11, 12], [8] * 2, 0)
    batch = t.collate([long_doc, short_doc, same_doc])
    shared = len(t.shared_prefix_ids)
    split = long_doc.document_prefix
    assert batch.shared_prefix == shared and batch.document_prefix == split
    assert short_doc.document_key() == same_doc.document_key() != long_doc.document_key()
    assert batch.prefix_source.tolist() == [0, 1, 1]  # the second row's prefix serves the third
    assert (batch.input_ids[:, :shared] == torch.tensor(t.shared_prefix_ids)).all()
    for row, layout in enumerate([long_doc, short_doc, same_doc]):
        mask = batch.attention_mask[row].bool()
        # Every row reads its own tokens in order, the document prefix ending at `split`.
        assert batch.input_ids[row][mask].tolist() == layout.input_ids
        assert mask[:split].sum() == layout.document_prefix
        assert mask[split - 1] and mask[-1]
    assert batch.query_mask.sum(1).tolist() == [3, 1, 4]
