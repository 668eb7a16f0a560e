"""Pseudo-queries: training and dev-check queries made from a corpus without judgments.

Two kinds, after InPars, Promptagator and GPL:

* `title`: a document's title is a query for its body. Wherever such a query's documents are
  scored (the consistency filter, candidates, groups) they are read without their titles,
  and without a copy of the title that opens the body (Cranfield's abstracts begin with
  their title): otherwise the source document would hold its own query word for word.
* `generate`: the packaged LM writes a query for a document, from the template that scores
  pairs (the passage, then its question label), see `qpeft/lm/query_writer.py`.

Each draft is checked here (blank, a copy of the document's first words, the same text for
several documents) and then by the first stage: it is kept only if its source document is
in the first stage's top `keep_top_k` for it (the InPars/Promptagator consistency filter).
A kept query is judged relevant (grade 1) to its source document and to nothing else; its
split is `pseudo_train` or `pseudo_dev`, by a hash of the document, so that every query of a
document falls on one side and no judged query ever shares a split with a pseudo one.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from qpeft.config import ConfigError
from qpeft.data.splits import nested_subset

PSEUDO_TRAIN, PSEUDO_DEV = "pseudo_train", "pseudo_dev"
PSEUDO_SPLITS = (PSEUDO_TRAIN, PSEUDO_DEV)
KINDS = {"title": ("title",), "generate": ("generate",), "both": ("title", "generate")}
# Why a draft is not a query, in the order the checks run.
SKIP_REASONS = ("no_title", "no_body", "empty", "copy_of_document", "duplicate", "beyond_top_k")


@dataclass
class PseudoQueriesConfig:
    """`prepare.pseudo_queries`: which queries to draft from the corpus, and how many."""

    kind: Literal["title", "generate", "both"] = "title"
    docs: int = 1000  # documents sampled (seeded, nested): each gives `per_doc` drafts a kind
    per_doc: int = 1  # generated queries per document (title: always one)
    keep_top_k: int = 20  # kept if the first stage ranks the source document this high
    dev_fraction: float = 0.1  # of the documents, whose queries make the dev check
    seed: int = 13
    # generate: how the LM writes. Greedy (temperature 0) writes one query per document;
    # per_doc > 1 needs sampling.
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 0.95
    batch_size: int = 16  # documents per generate() call
    shard_docs: int = 128  # documents per resumable shard (one Ray Data row each)

    def validate(self) -> None:
        key = "prepare.pseudo_queries"
        if self.docs <= 0:
            raise ConfigError(f"{key}.docs: must be a positive number of documents")
        if self.per_doc <= 0:
            raise ConfigError(f"{key}.per_doc: must be positive")
        if self.keep_top_k <= 0:
            raise ConfigError(f"{key}.keep_top_k: must be positive")
        if not 0 < self.dev_fraction < 1:
            raise ConfigError(f"{key}.dev_fraction: must be in (0, 1), got {self.dev_fraction}")
        if self.per_doc > 1 and self.temperature == 0:
            raise ConfigError(
                f"{key}.per_doc: {self.per_doc} queries a document need sampling; "
                f"set {key}.temperature above 0 (greedy decoding writes one)"
            )
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"{key}.temperature must be >= 0 and top_p in (0, 1]")
        if self.max_new_tokens <= 0 or self.batch_size <= 0 or self.shard_docs <= 0:
            raise ConfigError(f"{key}: max_new_tokens, batch_size and shard_docs must be positive")

    @property
    def kinds(self) -> tuple[str, ...]:
        return KINDS[self.kind]

    @property
    def generates(self) -> bool:
        return "generate" in self.kinds


def pseudo_split(doc_id: str, seed: int, dev_fraction: float) -> str:
    """`pseudo_dev` for a seeded hash-share `dev_fraction` of documents, else `pseudo_train`."""
    digest = hashlib.sha256(f"pseudo:{seed}:{doc_id}".encode()).digest()
    return PSEUDO_DEV if int.from_bytes(digest[:8], "big") / 2**64 < dev_fraction else PSEUDO_TRAIN


def sample_documents(doc_ids: list[str], size: int, seed: int) -> list[str]:
    """A seeded, nested sample of `size` distinct documents (all of them when fewer)."""
    return nested_subset(sorted(set(doc_ids)), size, seed)


def query_id(kind: str, doc_id: str, index: int = 0) -> str:
    """Ids that say where a query came from; judged ids never start with `pseudo-`."""
    return f"pseudo-title-{doc_id}" if kind == "title" else f"pseudo-gen-{doc_id}-{index}"


_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def without_title(title: str, text: str) -> str:
    """The body as title queries read it: `text` less a leading copy of `title` (word for
    word, case and punctuation aside) and the punctuation after it."""
    title_words = words(title)
    if title_words:
        opening = list(itertools.islice(_WORD.finditer(text), len(title_words)))
        if [m.group().lower() for m in opening] == title_words:
            text = text[opening[-1].end() :].lstrip(" \t\r\n.:;,-")
    return text.strip()


def first_check(query: str, document: str) -> str:
    """'' for a usable draft, else why not: 'empty' (no word) or 'copy_of_document' (its
    words are the document's first words, as an LM that echoes its passage writes)."""
    query_words = words(query)
    if not query_words:
        return "empty"
    if words(document)[: len(query_words)] == query_words:
        return "copy_of_document"
    return ""


def duplicates(drafts: list[dict]) -> set[int]:
    """Indices of usable drafts whose words also make a usable draft of another document:
    such a query has no one positive. `drafts`: dicts with text, doc_id and skipped."""
    keys = [" ".join(words(d["text"])) for d in drafts]
    documents: dict[str, set[str]] = {}
    for key, draft in zip(keys, drafts, strict=True):
        if not draft["skipped"]:
            documents.setdefault(key, set()).add(draft["doc_id"])
    return {
        i
        for i, (key, draft) in enumerate(zip(keys, drafts, strict=True))
        if not draft["skipped"] and len(documents[key]) > 1
    }


def title_drafts(documents: list[dict], seed: int, dev_fraction: float) -> list[dict]:
    """One draft a document (`documents`: doc_id, title, text): its title, or 'no_title', or
    'no_body' where nothing is left of the text without the title."""
    drafts = []
    for doc in documents:
        title = " ".join(doc["title"].split())
        reason = "no_title" if not title else "" if without_title(title, doc["text"]) else "no_body"
        drafts.append(draft("title", doc["doc_id"], 0, title, seed, dev_fraction, reason))
    return drafts


def draft(
    kind: str, doc_id: str, index: int, text: str, seed: int, dev_fraction: float, skipped: str
) -> dict:
    """A row of the `pseudo_queries` table before the first stage has ranked it."""
    return {
        "query_id": query_id(kind, doc_id, index),
        "text": text,
        "kind": kind,
        "doc_id": doc_id,
        "split": pseudo_split(doc_id, seed, dev_fraction),
        "source_rank": None,
        "skipped": skipped,
    }


def mark_duplicates(drafts: list[dict]) -> list[dict]:
    """`drafts` with 'duplicate' as the reason of every usable one `duplicates` finds."""
    repeated = duplicates(drafts)
    return [{**d, "skipped": "duplicate"} if i in repeated else d for i, d in enumerate(drafts)]


def skip_counts(rows: list[dict]) -> dict[str, int]:
    """Drafts per skip reason, every reason present (0 where none)."""
    counted = Counter(r["skipped"] for r in rows if r["skipped"])
    return {reason: counted.get(reason, 0) for reason in SKIP_REASONS}
