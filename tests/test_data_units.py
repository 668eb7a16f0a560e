import json
import random
from collections import Counter

from qpeft.data.groups import choose_group
from qpeft.data.sources import SourceConfig, parts
from qpeft.data.splits import split_of


def test_splits_are_deterministic_and_follow_fractions():
    fractions = {"train": 0.6, "dev": 0.2, "test": 0.2}
    ids = [str(i) for i in range(3000)]
    first = [split_of(q, 13, fractions) for q in ids]
    assert first == [split_of(q, 13, fractions) for q in reversed(ids)][::-1]
    counts = Counter(first)
    assert abs(counts["train"] / 3000 - 0.6) < 0.03 and abs(counts["dev"] / 3000 - 0.2) < 0.03
    assert first != [split_of(q, 14, fractions) for q in ids]


def test_group_positive_and_negatives():
    ranked = ["a", "b", "c", "d", "e"]
    judged = {"c": 2, "e": 3, "b": 0, "zz": 3}  # zz: relevant but not retrieved
    choice = choose_group(ranked, judged, 1, 2, 5, random.Random(0))
    assert choice.positive_id == "e"  # highest grade; tie with zz broken by first-stage rank
    assert set(choice.negative_ids) <= {"a", "b", "d"} and len(choice.negative_ids) == 2
    assert choose_group(ranked, {"a": 0}, 1, 2, 5, random.Random(0)).skipped == "no_positive"
    assert choose_group(["a"], {"a": 1}, 1, 2, 5, random.Random(0)).skipped == "no_negative"


def test_dpr_source_parts(tmp_path):
    path = tmp_path / "nq.json"
    ctxs = [
        {"id": "1", "title": "A", "text": "x", "score": 3.0, "has_answer": True},
        {"id": "2", "title": "B", "text": "y", "score": 2.0, "has_answer": False},
    ]
    path.write_text(json.dumps([{"question": "q?", "answers": ["x"], "ctxs": ctxs}] * 2))
    src = SourceConfig(dpr=str(path))

    def rows(kind):
        return [r for part in parts(src, kind) for r in part()]

    assert [r["doc_id"] for r in rows("corpus")] == ["1", "2"]  # deduplicated across examples
    assert [r["query_id"] for r in rows("queries")] == ["nq-0", "nq-1"]
    assert rows("queries")[0]["answers"] == ["x"]
    assert [r["relevance"] for r in rows("qrels")] == [1, 0, 1, 0]
    assert [r["rank"] for r in rows("run")] == [1, 2, 1, 2]
