"""Token layout of a (query, document) pair and its collation into padded batches.

Default layout (the paper's), hints as suffix:

    <bos> P  "Passage: " d " \\n"  HINTS  "Question: \\n"  <bos> q <eos>

or, as prefix, HINTS right after P. HINTS is a block of placeholder slots that the adapter
fills with vectors after collation. Each token carries a `Segment` code, so the adapter can
mask padding, hint slots and the query out of its keys, and the scorer can find the labels.

Batches are left-padded and position ids are counted over attended tokens only, so a pair's
score does not depend on what it is batched with. A pair is read in three parts, each in
columns of its own (padding goes at the start of the second and third):

    [ common prefix | document prefix | suffix ]
      <bos> P "Passage: "   d " \n"     HINTS "Question: \n" <bos> q <eos>

The common prefix is the same for every pair; the document prefix depends on the document
alone (with suffix hints). So the scorer computes the common prefix once per batch, each
distinct document's prefix once, and every pair's suffix on top of its document's keys and
values (document-major scoring). With hints as a prefix, the document follows the hints and
the document prefix is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum

import torch
from transformers import PreTrainedTokenizerBase

from qpeft.config import ConfigError, TemplateConfig


class Segment(IntEnum):
    PAD = 0
    TEXT = 1  # <bos> and the fixed template strings
    PROMPT = 2  # P: a fixed hard prompt, or replaced by a trainable soft prompt
    DOC = 3
    HINT = 4  # placeholder slots filled by the adapter's hint block
    LABEL = 5  # <bos> q <eos>: the tokens whose likelihood is the score


@dataclass
class PairLayout:
    """One encoded pair before padding."""

    input_ids: list[int]
    segments: list[int]
    query_ids: list[int]
    doc_tokens: int
    doc_truncated: bool
    query_tokens_cut: int = 0  # tokens cut from the end of a long query (template policy)
    # Leading tokens that depend on the document alone (the common prefix included): every
    # pair of one document has the same ones, so their keys and values are computed once.
    document_prefix: int = 0

    def document_key(self) -> tuple[int, ...]:
        """The tokens whose keys and values pairs of one document share."""
        return tuple(self.input_ids[: self.document_prefix])


@dataclass
class Batch:
    """Left-padded tensors for a list of pairs (B pairs, T positions, Lq query tokens)."""

    input_ids: torch.Tensor  # (B, T) long; pad id at padding and hint slots
    attention_mask: torch.Tensor  # (B, T) long
    segments: torch.Tensor  # (B, T) long Segment codes
    query_ids: torch.Tensor  # (B, Lq) long, right-padded with 0
    query_mask: torch.Tensor  # (B, Lq) bool
    shared_prefix: int = 0  # leading columns identical in every row (never padding)
    # Columns [shared_prefix, document_prefix) hold each row's document prefix (left-padded);
    # equal to shared_prefix when rows have none of their own; 0 when nothing is reused.
    document_prefix: int = 0
    # (B,) long: the first row with this row's document prefix, whose keys and values the
    # row reuses (None: no document prefix).
    prefix_source: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Batch(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in moved.items()})

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class QueryTooLongError(ValueError):
    """A query is over `template.max_query_tokens` and the policy is `skip` or `fail`."""


class Template:
    """Encodes pairs into `PairLayout`s and collates them; tokenizes the template once."""

    def __init__(
        self,
        config: TemplateConfig,
        tokenizer: PreTrainedTokenizerBase,
        method: str,
        hint_gate: bool,
    ):
        """`method` and `hint_gate` pick the default prompt (`TemplateConfig.prompt_for`)."""
        self.config = config
        self.tokenizer = tokenizer
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError(
                "the tokenizer needs both a bos and an eos token for the label <bos> q <eos>"
            )
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.prompt_ids = self._ids(config.prompt_for(method, hint_gate))
        self.passage_prefix_ids, self._joins_passage = self._passage_prefix(config.passage_prefix)
        self.passage_suffix_ids = self._ids(config.passage_suffix)
        self.hint_prefix_ids = self._ids(config.hint_prefix)
        self.hint_suffix_ids = self._ids(config.hint_suffix)
        self.question_ids = self._ids(config.question)

    @property
    def shared_prefix_ids(self) -> list[int]:
        """Leading tokens identical for every pair, whatever the query and document."""
        prefix = [self.bos, *self.prompt_ids]
        if self.config.hint_position == "suffix":
            prefix += self.passage_prefix_ids
        return prefix

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _text_ids(self, texts: list[str]) -> list[list[int]]:
        """User text: a literal "<eos>" or "<|im_start|>" in a query or document is
        tokenized as characters, never as the special token it spells."""
        return self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)[
            "input_ids"
        ]

    def _passage_prefix(self, prefix: str) -> tuple[list[int], bool]:
        """Tokens of "Passage: " as they come out of the joined string "Passage: " + d.

        Tokenizers attach a space to the word after it ("Ġword", "▁word"): tokenized alone,
        "Passage: " ends in a lone space token and the document gains a second word
        boundary, which the LM never saw in pretraining. When the prefix without its
        trailing whitespace is a token prefix of the joined text, that is the prefix, and
        documents are tokenized joined to it (`tokenize_docs`)."""
        stripped = prefix.rstrip()
        if not prefix or stripped == prefix:
            return self._ids(prefix), False
        head = self._ids(stripped)
        joined = self._ids(prefix + "The")
        if head and joined[: len(head)] == head:
            return head, True
        return self._ids(prefix), False

    def tokenize_queries(self, queries: list[str]) -> list[list[int]]:
        return self._text_ids(list(queries))

    def tokenize_docs(self, docs: list[str]) -> list[list[int]]:
        """Document tokens as they follow the passage prefix in one joined string."""
        if not self._joins_passage:
            return self._text_ids(list(docs))
        prefix, head = self.config.passage_prefix, self.passage_prefix_ids
        joined = self._text_ids([prefix + doc for doc in docs])
        alone = [ids[len(head) :] if ids[: len(head)] == head else None for ids in joined]
        if all(ids is not None for ids in alone):
            return alone
        # A document whose first characters merge into the prefix's tokens: on its own,
        # with the whitespace the prefix ended in.
        boundary = prefix[len(prefix.rstrip()) :]
        return [
            ids if ids is not None else self._text_ids([boundary + doc])[0]
            for ids, doc in zip(alone, docs, strict=True)
        ]

    def clip_query(self, query_ids: list[int]) -> tuple[list[int], int]:
        """Apply `template.long_queries` to a tokenized query: (tokens kept, tokens cut).

        `truncate` keeps the first `max_query_tokens` tokens: a query states its need first
        (a title before a narrative, a question before its context), and the label must be
        a prefix of the text a user typed, not its tail. `skip` and `fail` raise here;
        pipelines find such queries before any worker starts and leave them out or stop.
        """
        limit = self.config.max_query_tokens
        if len(query_ids) <= limit:
            return list(query_ids), 0
        if self.config.long_queries == "truncate":
            return list(query_ids[:limit]), len(query_ids) - limit
        raise QueryTooLongError(
            f"{len(query_ids)} tokens, over template.max_query_tokens={limit} "
            f"(template.long_queries={self.config.long_queries})"
        )

    def check_room(self, max_hint_slots: int) -> None:
        """Refuse a template whose longest allowed query and its hints leave no room for a
        document in `max_length`: every pair must fit, whatever the data."""
        cfg = self.config
        fixed = self.fixed_length(max_hint_slots, cfg.max_query_tokens)
        if fixed >= cfg.max_length:
            raise ConfigError(
                f"template.max_length={cfg.max_length} leaves no room for a document: a query "
                f"of template.max_query_tokens={cfg.max_query_tokens} tokens with its "
                f"{max_hint_slots} hint slots and the template takes {fixed} tokens; raise "
                "template.max_length or lower template.max_query_tokens (or adapter.max_hints)"
            )

    def fixed_length(self, n_hint_slots: int, query_len: int) -> int:
        """Tokens of a pair other than the document."""
        return (
            1
            + len(self.prompt_ids)
            + len(self.passage_prefix_ids)
            + len(self.passage_suffix_ids)
            + n_hint_slots
            + len(self.question_ids)
            + query_len
            + 2
        )

    def encode(
        self, query_ids: list[int], doc_ids: list[int], n_hint_slots: int, query_tokens_cut: int = 0
    ) -> PairLayout:
        """Lay out one pair (query already clipped), cutting the document to fit
        `max_length`."""
        cfg = self.config
        fixed = self.fixed_length(n_hint_slots, len(query_ids))
        if fixed >= cfg.max_length:  # check_room rules this out for clipped queries
            raise ConfigError(
                f"a query of {len(query_ids)} tokens needs {fixed} tokens with the template, "
                f"leaving no document in template.max_length={cfg.max_length}"
            )
        budget = cfg.max_length - fixed
        if cfg.max_doc_tokens is not None:
            budget = min(budget, cfg.max_doc_tokens)
        doc = doc_ids[:budget]
        hints = [(self.pad, Segment.HINT)] * n_hint_slots
        passage = (
            [(t, Segment.TEXT) for t in self.passage_prefix_ids]
            + [(t, Segment.DOC) for t in doc]
            + [(t, Segment.TEXT) for t in self.passage_suffix_ids]
        )
        head = [(self.bos, Segment.TEXT)] + [(t, Segment.PROMPT) for t in self.prompt_ids]
        body = hints + passage if cfg.hint_position == "prefix" else passage + hints
        tail = [(t, Segment.TEXT) for t in self.question_ids] + [
            (t, Segment.LABEL) for t in [self.bos, *query_ids, self.eos]
        ]
        tokens = head + body + tail
        document_prefix = len(head) + (len(passage) if cfg.hint_position == "suffix" else 0)
        return PairLayout(
            input_ids=[t for t, _ in tokens],
            segments=[int(s) for _, s in tokens],
            query_ids=list(query_ids),
            doc_tokens=len(doc),
            doc_truncated=len(doc) < len(doc_ids),
            query_tokens_cut=query_tokens_cut,
            document_prefix=document_prefix,
        )

    def collate(self, layouts: list[PairLayout], share_prefix: bool = True) -> Batch:
        """Pad layouts into a `Batch` in the three-part column layout, so labels end every
        row at the same position. `share_prefix` lets the scorer reuse the common and
        document prefixes' keys and values across rows (fewer FLOPs; on a GPU the extra
        launches can cost more than they save for small models); without it rows are
        plainly left-padded."""
        return collate_layouts(layouts, self.pad, len(self.shared_prefix_ids), share_prefix)


def collate_layouts(
    layouts: list[PairLayout],
    pad_id: int,
    shared: int,
    share_prefix: bool = True,
    prefix_owners: list[int] | None = None,
) -> Batch:
    """`Template.collate` for layouts whose first `shared` tokens are the same in every row
    (layouts of several templates, as in `qpeft.scoring.mixed`, pass the length they share).
    `prefix_owners` tells rows whose prefix tokens are equal but embedded differently (a
    soft prompt of each adapter) apart: only rows with equal tokens and owner share."""
    if not share_prefix:
        return _collate(layouts, pad_id, [0] * len(layouts), 0, 0, None)
    starts = [max(shared, layout.document_prefix) for layout in layouts]
    split = max(starts)
    first_of: dict[tuple, int] = {}
    sources = []
    for row, layout in enumerate(layouts):
        owner = prefix_owners[row] if prefix_owners is not None else None
        key = (owner, tuple(layout.input_ids[: starts[row]]))
        sources.append(first_of.setdefault(key, row))
    source = torch.tensor(sources, dtype=torch.long) if split > shared else None
    return _collate(layouts, pad_id, starts, shared, split, source)


def _collate(
    layouts: list[PairLayout],
    pad_id: int,
    starts: list[int],
    shared: int,
    split: int,
    prefix_source: torch.Tensor | None,
) -> Batch:
    """Columns [0, shared): the common prefix; [shared, split): each row's tokens up to
    `starts[row]`, left-padded; [split, end): the rest of the row, left-padded."""
    tail_width = max(len(x.input_ids) - start for x, start in zip(layouts, starts, strict=True))
    width = split + tail_width
    qwidth = max(1, max(len(x.query_ids) for x in layouts))
    n = len(layouts)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    segments = torch.zeros((n, width), dtype=torch.long)
    query_ids = torch.zeros((n, qwidth), dtype=torch.long)
    query_mask = torch.zeros((n, qwidth), dtype=torch.bool)
    for row, (layout, start) in enumerate(zip(layouts, starts, strict=True)):
        ids, segs = torch.tensor(layout.input_ids), torch.tensor(layout.segments)
        input_ids[row, :shared], segments[row, :shared] = ids[:shared], segs[:shared]
        input_ids[row, split - (start - shared) : split] = ids[shared:start]
        segments[row, split - (start - shared) : split] = segs[shared:start]
        input_ids[row, width - (len(ids) - start) :] = ids[start:]
        segments[row, width - (len(ids) - start) :] = segs[start:]
        qlen = len(layout.query_ids)
        query_ids[row, :qlen] = torch.tensor(layout.query_ids, dtype=torch.long)
        query_mask[row, :qlen] = True
    attention_mask = (segments != Segment.PAD).long()
    return Batch(
        input_ids,
        attention_mask,
        segments,
        query_ids,
        query_mask,
        shared_prefix=shared,
        document_prefix=split,
        prefix_source=prefix_source,
    )
