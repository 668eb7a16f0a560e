"""The README's main job, in a reduced size: every step runs for real (NFCorpus's official
splits through offline ir_datasets, the packaged Gemma 3 270M of configs/demo.yaml), and a
re-run resumes instead of redoing."""

import json

import pytest

from pipelines.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REDUCED = [
    "demo.rerank_queries=2",
    "demo.depth=8",
    "train.max_train_queries=8",  # 2 steps of 4 queries
    "train.queries_per_batch=2",
    "train.max_negatives=1",
    "train.dev_max_queries=2",
    "train.dev_depth=3",
    "template.max_doc_tokens=32",
    "first_stage.depth=20",
    "model.dtype=float32",  # the figures below hold on every CPU, bf16-capable or not
    "first_stage.dense.dtype=float32",
    "first_stage.dense.max_tokens=32",  # MiniLM reads 32 tokens of each of 3,633 documents
]

# The two NFCorpus test queries of the reduced demo's sample (hybrid top 8, 32-token
# documents, Gemma 3 270M and MiniLM in fp32), recorded from this test's run; changes to the
# first stage or to scoring must show up here. NDCG@10 alone would not show the scorer's
# (zero-shot reorders both queries and stays near the first stage), so zero-shot's ranking
# and its top score per query are recorded too.
RECORDED_NDCG10 = {"bm25": 0.5804, "hybrid": 0.5801, "zero_shot": 0.5801}
RECORDED_ZERO_SHOT = {
    "PLAIN-1225": (
        [
            "MED-717",
            "MED-918",
            "MED-1261",
            "MED-1669",
            "MED-1710",
            "MED-1674",
            "MED-5057",
            "MED-3059",
        ],
        -8.1755,
    ),
    "PLAIN-2197": (
        [
            "MED-5053",
            "MED-4120",
            "MED-4868",
            "MED-1625",
            "MED-5054",
            "MED-1710",
            "MED-2226",
            "MED-1627",
        ],
        -10.5278,
    ),
}


def read_trec(path) -> dict[str, list[tuple[str, float]]]:
    ranked: dict[str, list[tuple[str, float]]] = {}
    for line in path.read_text().splitlines():
        query_id, _, doc_id, _, score, _ = line.split()
        ranked.setdefault(query_id, []).append((doc_id, float(score)))
    return ranked


def test_reduced_demo_runs_every_step_and_resumes(ray_session, tmp_path, capsys, monkeypatch):
    """From an empty model cache, as on a new user's machine: the driver converts the
    packaged model once before any Ray worker starts, and the workers only read it."""
    monkeypatch.setenv("QPEFT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    args = ["--config", "configs/demo.yaml", "--set", f"demo.output_dir={out}"]
    args += [x for item in REDUCED for x in ("--set", item)]
    assert main(["demo", *args]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert captured.err.count("[model] converting the packaged gemma3-270m") == 1
    assert captured.err.count("[model] converting the packaged all-minilm-l6-v2") == 1
    assert (tmp_path / "cache" / "models" / "gemma3-270m" / "model.safetensors").exists()
    for step in (
        "step 1/4: prepare beir/nfcorpus/dev, beir/nfcorpus/test, beir/nfcorpus/train",
        "step 2/4: train qpeft_a",
        "step 3/4: rerank the hybrid top-8 of 2 test queries with 3 systems",
        "step 4/4: evaluate",
    ):
        assert step in printed
    # Prepare made candidates and groups for the queries the demo uses, and no others.
    prepared = json.loads((out / "prepare" / "counts.json").read_text())
    assert prepared["queries_by_split"] == {"train": 8, "dev": 2, "test": 2}
    assert prepared["skipped"]["queries"]["beyond_max_queries"] == 3237 - 12
    report = json.loads((out / "evaluate" / "report.json").read_text())
    assert report["queries"] == 2 and report["baseline"] == "zero_shot"
    systems = {"hybrid", "zero_shot", "qpeft_a"}
    fused = {f"{n}_fused" for n in systems - {"hybrid"}}
    assert set(report["runs"]) == systems | fused | {"bm25"}
    assert set(report["runs"]["zero_shot_fused"]["p_value_against"]) == {"hybrid", "bm25"}
    # Regression: BM25, the hybrid first stage and zero-shot on two NFCorpus test queries.
    for name, recorded in RECORDED_NDCG10.items():
        assert report["runs"][name]["mean"]["ndcg@10"] == pytest.approx(recorded, abs=1e-3)
    bm25 = read_trec(out / "rerank" / "bm25.trec")
    assert sorted(bm25) == sorted(read_trec(out / "rerank" / "hybrid" / "run.trec"))
    # BM25's own top demo.depth (fewer where fewer documents share a term with the query).
    assert max(len(hits) for hits in bm25.values()) == 8
    ranked = read_trec(out / "rerank" / "zero_shot" / "run.trec")
    for query_id, (order, top_score) in RECORDED_ZERO_SHOT.items():
        assert [doc_id for doc_id, _ in ranked[query_id]] == order
        assert ranked[query_id][0][1] == pytest.approx(top_score, abs=1e-3)
    for name in systems:
        counts = json.loads((out / "rerank" / name / "counts.json").read_text())
        assert counts["pairs_written"] == counts["pairs_expected"] == 16
        assert counts["missing"] == counts["duplicated"] == 0
    adapter = json.loads(
        (out / "train" / "qpeft_a" / "adapter" / "adapter_config.json").read_text()
    )
    assert adapter["method"] == "qpeft_a"
    assert adapter["base_model_name_or_path"] == "google/gemma-3-270m"
    metrics = json.loads((out / "train" / "qpeft_a" / "metrics.json").read_text())
    first, last = metrics["history"][0], metrics["history"][-1]
    assert first["epoch"] == 0 and metrics["steps"] == last["step"] == 2
    # The two steps moved the adapter, whether or not dev kept them: the hint gate opened
    # and E' rows left the embeddings they were copied from.
    assert first["gate_tanh_max"] == first["embed_delta_rel_max"] == 0
    assert last["gate_tanh_max"] > 0 and last["embed_delta_rel_max"] > 0
    # Gated hints: untrained, the adapter is zero-shot, so its step-0 dev check gives
    # zero-shot's fusion weight.
    zero_shot = json.loads((out / "rerank" / "zero_shot" / "counts.json").read_text())
    assert zero_shot["fusion"]["weight"] == first["fusion_weight"]
    # Step 0 is a candidate: the exported adapter is never below where training began.
    assert adapter["dev_ndcg10"] >= first["dev_ndcg10"]
    assert "| qpeft_a |" in printed and (out / "evaluate" / "report.png").exists()
    assert "On these 2 test queries the best LLM system is" in printed
    assert "The first stage, hybrid, scores" in printed
    assert "qpeft_a trained 2 steps on 8 queries" in printed
    assert "Against zero_shot: " in printed and " on dev (" in printed

    # Everything is on disk: a second run finds each step done and scores nothing again.
    assert main(["demo", *args]) == 0
    again = capsys.readouterr().out
    assert "is complete; nothing to do" in again
    for name in systems:
        counts = json.loads((out / "rerank" / name / "counts.json").read_text())
        assert counts["scored_this_run"] == 16 and len(counts["invocations"]) == 1
    assert json.loads((out / "evaluate" / "report.json").read_text())["runs"] == report["runs"]

    # Another configuration for the same folder is refused in one line naming what differs.
    assert main(["demo", *args, "--set", "model.name=smollm2-135m"]) == 2
    refusal = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{out} holds outputs made with another configuration" in refusal
    assert "(model.name is 'gemma3-270m' there, 'smollm2-135m' here)" in refusal
