"""Answer-based evaluation for open-domain QA, as DPR, UPR and the Q-PEFT paper report it.

A passage *has the answer* when the token sequence of one of the gold answers occurs in it,
after DPR's normalisation (Unicode NFD, lower case, tokens are runs of letters/digits/marks
or single other non-space characters). For a question and its reranked passages:

* hit@k: 1 if any of the top k passages has an answer, else 0 (DPR's "top-k accuracy");
* recall@k: the answer-bearing passages in the top k over those among all the question's
  ranked candidates (0 when no candidate has an answer).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import regex

DEFAULT_KS = (5, 10, 20, 30, 40, 50)
_TOKEN = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(unicodedata.normalize("NFD", text).lower())


def has_answer(text: str, answers: Sequence[str]) -> bool:
    words = tokens(text)
    for answer in answers:
        target = tokens(answer)
        if not target:
            continue
        width = len(target)
        if any(words[i : i + width] == target for i in range(len(words) - width + 1)):
            return True
    return False


def answer_metrics(
    ranked_texts: Sequence[str], answers: Sequence[str], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """hit@k and recall@k of one question's ranked passages (best first)."""
    found = [has_answer(text, answers) for text in ranked_texts]
    total = sum(found)
    values = {}
    for k in ks:
        in_top = sum(found[:k])
        values[f"hit@{k}"] = float(in_top > 0)
        values[f"answer_recall@{k}"] = in_top / total if total else 0.0
    return values
