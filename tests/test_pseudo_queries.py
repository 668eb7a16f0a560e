"""Pseudo-queries (`prepare.pseudo_queries`): drafts, checks, the filter, and training's
choice of splits on a corpus with no judged query at all."""

import json

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from pipelines.prepare import PrepareConfig, prepare
from qpeft.artifacts import PreparedData
from qpeft.config import ConfigError, from_dict
from qpeft.data.pseudo_queries import (
    PSEUDO_DEV,
    PSEUDO_TRAIN,
    PseudoQueriesConfig,
    first_check,
    mark_duplicates,
    pseudo_split,
    title_drafts,
    without_title,
)

TOPICS = [
    ("Wing stall at high angles of attack", "flow separates over the upper surface of a wing"),
    ("Heat transfer in boundary layers", "convective heat flux near a heated flat plate"),
    ("Bread dough fermentation", "yeast converts sugars into carbon dioxide in dough"),
    ("Supersonic shock waves", "a normal shock raises the pressure across a thin front"),
    ("Turbulent pipe flow", "friction factor of fully developed turbulence in pipes"),
    ("Vitamin D and bone health", "calcium absorption depends on vitamin d levels"),
    ("Coffee and sleep", "caffeine delays the onset of sleep in adults"),
    ("Laminar jet spreading", "a round jet widens linearly with distance downstream"),
    ("Statins and heart disease", "cholesterol lowering drugs reduce coronary events"),
    ("Panel flutter", "aeroelastic panels oscillate beyond a dynamic pressure limit"),
    ("Soy and breast cancer", "isoflavones in soy foods and tumour recurrence"),
    ("Ice accretion on rotors", "supercooled droplets freeze on helicopter blades"),
    # A body that opens with its title, as Cranfield's do: title queries read it without.
    ("Creep of hot turbine blades", "creep of hot turbine blades . blades elongate under load"),
]


def corpus_file(tmp_path):
    """Thirteen titled documents, one without a title, and two with the same title."""
    rows = [
        {"id": f"d{i}", "title": title, "text": f"{body} study number {i}"}
        for i, (title, body) in enumerate(TOPICS)
    ]
    rows.append({"id": "untitled", "title": "", "text": "a document without a title"})
    rows.append({"id": "twin1", "title": "Same title", "text": "wind tunnel walls"})
    rows.append({"id": "twin2", "title": "Same title", "text": "tunnel wall corrections"})
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def prepare_config(out, corpus, model=None, **pseudo):
    return from_dict(
        PrepareConfig,
        {
            **({"model": {"name": model}} if model else {}),
            "prepare": {
                "output_dir": str(out),
                "source": {"corpus": corpus},
                "first_stage": {"kind": "bm25", "depth": 10, "negative_depth": 10},
                "pseudo_queries": {"kind": "title", "docs": 100, "keep_top_k": 3, **pseudo},
            },
            "ray": {"num_cpus": 2},
        },
    )


def test_checks_drop_blank_copied_and_repeated_drafts():
    assert first_check("   ", "anything") == "empty"
    assert first_check("Wing stall, at high", "wing stall at high angles") == "copy_of_document"
    assert first_check("why do wings stall", "wing stall at high angles") == ""
    drafts = title_drafts(
        [
            {"doc_id": "a", "title": "Same", "text": "x"},
            {"doc_id": "b", "title": " same ", "text": "y"},
            {"doc_id": "c", "title": "", "text": "z"},
            {"doc_id": "d", "title": "Other", "text": "w"},
            {"doc_id": "e", "title": "Bare", "text": "Bare."},
        ],
        seed=1,
        dev_fraction=0.5,
    )
    reasons = [d["skipped"] for d in mark_duplicates(drafts)]
    assert reasons == ["duplicate", "duplicate", "no_title", "", "no_body"]


def test_a_title_that_opens_its_body_is_cut_from_it():
    text = "Creep of hot\nturbine blades .\n  blades elongate under load"
    assert without_title("creep of hot turbine blades.", text) == "blades elongate under load"
    assert without_title("Creep", "Creeping flow") == "Creeping flow"
    assert without_title("Same", "Same.") == ""
    assert without_title("", " body ") == "body"


def test_pseudo_split_is_a_seeded_share_of_documents():
    splits = [pseudo_split(f"doc{i}", 13, 0.1) for i in range(2000)]
    assert 150 < splits.count(PSEUDO_DEV) < 250
    assert splits == [pseudo_split(f"doc{i}", 13, 0.1) for i in range(2000)]
    assert set(splits) == {PSEUDO_TRAIN, PSEUDO_DEV}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"per_doc": 3}, "need sampling"),
        ({"dev_fraction": 0}, "dev_fraction"),
        ({"docs": 0}, "docs"),
    ],
)
def test_contradictory_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        PseudoQueriesConfig(**settings).validate()


def test_config_errors_name_the_keys(tmp_path):
    corpus = corpus_file(tmp_path)
    with pytest.raises(ConfigError, match="keep_top_k: 30 is deeper"):
        prepare_config(tmp_path / "a", corpus, keep_top_k=30)
    with pytest.raises(ConfigError, match=r"model: .* writes queries"):
        prepare_config(tmp_path / "b", corpus, kind="generate")
    with pytest.raises(ConfigError, match=r"source\.queries: required"):
        from_dict(PrepareConfig, {"prepare": {"source": {"corpus": corpus}}})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pseudo_queries_from_a_corpus_without_judgments_resume_and_feed_training(
    ray_session, tmp_path, capsys
):
    """Titles and SmolLM2's queries for 16 documents and no query file: checked, filtered,
    split, and read by training's dev check. Then a "kill" (generation shard 1 and
    everything after generation gone): re-running writes shard 1 alone (greedy decoding
    gives it back as it was), and a marker left in shard 0 survives."""
    import shutil

    import pyarrow.parquet as pq

    from pipelines.train import DataSection, QuerySplits, query_splits
    from qpeft.training.loop import TrainSettings, load_dev

    out = tmp_path / "prepared"
    cfg = prepare_config(
        out,
        corpus_file(tmp_path),
        "smollm2-135m",
        kind="both",
        dev_fraction=0.3,
        shard_docs=5,
        max_new_tokens=6,
    )
    counts = prepare(cfg)
    assert "docs is 100, the corpus has 16 documents: all of them are used" in (
        capsys.readouterr().out
    )
    assert counts["queries"] == 0 and counts["judged_queries"] == 0
    pseudo = counts["pseudo_queries"]
    generation = pseudo["generation"]
    assert (generation["documents"], generation["shards"], generation["shards_this_run"]) == (
        16,
        4,
        4,
    )
    assert generation["new_tokens"] > 0 and generation["documents_per_second"] > 0
    titles = pseudo["by_kind"]["title"]
    assert titles["drafted"] == 16 and pseudo["by_kind"]["generate"]["drafted"] == 16
    assert titles["skipped"]["no_title"] == 1 and titles["skipped"]["duplicate"] == 2
    assert titles["kept"] + titles["skipped"]["beyond_top_k"] == 13
    assert pseudo["kept"] == sum(pseudo["kept_by_split"].values()) > 0
    assert counts["pseudo_groups"][PSEUDO_TRAIN] + counts["pseudo_groups"][PSEUDO_DEV] > 0

    prepared = PreparedData(str(out))
    kept = {r["query_id"]: r for r in prepared.pseudo_queries()}
    # A title query's documents are read without their titles, wherever they are scored.
    for group in pads.dataset(str(out / "groups")).to_table().to_pylist():
        source = kept[group["query_id"]]
        assert group["positive_id"] == source["doc_id"]
        if source["kind"] == "title":
            assert group["query"].lower() not in group["positive_text"].lower()
            assert not any("\n" in t for t in group["negative_texts"])
    dev_ids = prepared.query_ids(PSEUDO_DEV)
    candidates = prepared.table(prepared.CANDIDATES, filter=pc.field("split") == PSEUDO_DEV)
    assert set(candidates.column("query_id").to_pylist()) == set(dev_ids)
    # Training picks the pseudo splits by itself: the folder has no judged query.
    splits = query_splits(DataSection(prepared_dir=str(out)))
    assert splits == QuerySplits(PSEUDO_TRAIN, PSEUDO_DEV)
    with pytest.raises(ConfigError, match=r"data\.queries: judged, but .* no training group"):
        query_splits(DataSection(prepared_dir=str(out), queries="judged"))
    dev = load_dev(prepared, TrainSettings(dev_depth=10), split=splits.dev)
    assert set(dev.qrels) == set(dev_ids)
    assert all(dev.qrels[q] == {kept[q]["doc_id"]: 1} for q in dev_ids)

    shards = out / "pseudo_generated"
    before = pq.read_table(shards / "shard-00001.parquet").to_pylist()[0]["queries"]
    marked = pq.read_table(shards / "shard-00000.parquet").to_pylist()[0]
    marked["queries"] = [["marker query"] for _ in marked["queries"]]
    pq.write_table(
        pq.read_table(shards / "shard-00000.parquet").from_pylist([marked]),
        shards / "shard-00000.parquet",
    )
    (shards / "shard-00001.parquet").unlink()
    for name in ("_SUCCESS", "counts.json", "pseudo_queries.json"):
        (out / name).unlink()
    shutil.rmtree(out / "pseudo_queries")

    again = prepare(cfg)["pseudo_queries"]
    assert again["generation"]["shards_this_run"] == 1
    assert pq.read_table(shards / "shard-00001.parquet").to_pylist()[0]["queries"] == before
    drafts = pads.dataset(str(out / "pseudo_queries")).to_table().to_pylist()
    generated = {d["doc_id"]: d for d in drafts if d["kind"] == "generate"}
    # One text for the five documents of shard 0: none has a positive of its own.
    for doc_id in marked["doc_ids"]:
        assert generated[doc_id]["text"] == "marker query"
        assert generated[doc_id]["skipped"] == "duplicate"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_title_kind_is_refused_when_no_document_has_a_title(ray_session, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n')
    with pytest.raises(ConfigError, match=r"no document of .*corpus has a title"):
        prepare(prepare_config(tmp_path / "out", str(corpus)))
