"""Interpolation with the first stage: rank-safe per query, weight chosen on dev."""

from qpeft.metrics import ranked
from qpeft.scoring.fusion import choose_weight, fuse, normalised

LM = {"q1": {"a": -2.0, "b": -1.0, "c": -3.0}, "q2": {"x": -0.5, "y": -0.7}}
BM25 = {"q1": {"a": 12.0, "b": 3.0, "c": 7.0}, "q2": {"x": 1.0, "y": 9.0}}


def test_normalised_is_min_max_per_query():
    assert normalised({"a": 2.0, "b": 4.0, "c": 3.0}) == {"a": 0.0, "b": 1.0, "c": 0.5}
    assert normalised({"a": 7.0, "b": 7.0}) == {"a": 0.5, "b": 0.5}


def test_end_weights_reproduce_each_system_and_scale_is_irrelevant():
    for query in LM:
        assert ranked(fuse(LM, BM25, 1.0)[query]) == ranked(LM[query])
        assert ranked(fuse(LM, BM25, 0.0)[query]) == ranked(BM25[query])
    scaled = {q: {d: 100 * s + 5 for d, s in docs.items()} for q, docs in BM25.items()}
    assert fuse(LM, scaled, 0.4) == fuse(LM, BM25, 0.4)


def test_fusion_can_beat_both_systems_and_the_weight_is_the_best_on_these_queries():
    # q1: the LM has the relevant doc second, BM25 third; together they put it first.
    lm = {"q1": {"rel": 0.8, "n1": 1.0, "n2": 0.0}}
    bm25 = {"q1": {"rel": 5.0, "n1": 0.0, "n2": 10.0}}
    qrels = {"q1": {"rel": 1}}
    weight, curve = choose_weight(lm, bm25, qrels)
    assert curve[1.0] < 1.0 and curve[0.0] < 1.0
    assert curve[weight] == 1.0 == max(curve.values())
    assert ranked(fuse(lm, bm25, weight)["q1"])[0] == "rel"


def test_only_pairs_both_runs_scored_are_fused():
    fused = fuse({"q1": {"a": 1.0, "b": 0.0}, "q9": {"z": 1.0}}, {"q1": {"a": 1.0}}, 0.5)
    assert fused == {"q1": {"a": 0.5}}
