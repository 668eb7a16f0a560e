"""A collection's own splits: ir_datasets ids per split, a qrels file per split, a split
file; the errors a user meets (a query in two splits, unknown queries, an empty split)."""

import pytest

from qpeft.data.official_splits import (
    from_irds,
    from_qrels_files,
    from_split_file,
    split_assignment,
)
from qpeft.data.readers import DataError
from qpeft.data.sources import SourceConfig, full_text
from qpeft.data.splits import nested_subset


def write(path, text):
    path.write_text(text)
    return str(path)


def test_qrels_per_split_assign_each_judged_query(tmp_path):
    train = write(tmp_path / "train.qrels", "q1 0 d1 1\nq1 0 d2 2\nq2 0 d1 1\n")
    dev = write(tmp_path / "dev.qrels", "q3 0 d3 2\n")
    got = from_qrels_files({"train": train, "dev": dev}, {"q1", "q2", "q3", "q4"}, "queries.tsv")
    assert got.split_of == {"q1": "train", "q2": "train", "q3": "dev"}
    assert got.counts() == {"train": 2, "dev": 1}


def test_a_query_in_two_splits_names_both(tmp_path):
    train = write(tmp_path / "train.qrels", "q1 0 d1 1\n")
    test = write(tmp_path / "test.qrels", "q1 0 d2 1\n")
    with pytest.raises(
        DataError,
        match=r"test.qrels .*'q1' is in split 'test' and also in "
        r"split 'train' \(.*train.qrels\)",
    ):
        from_qrels_files({"train": train, "test": test}, {"q1"}, "queries.tsv")


def test_qrels_naming_queries_absent_from_the_queries_file(tmp_path):
    dev = write(tmp_path / "dev.qrels", "q1 0 d1 1\nq9 0 d1 1\n")
    with pytest.raises(
        DataError,
        match=r"dev.qrels: split 'dev' judges 1 queries absent "
        r"from queries.tsv \(e.g. q9\)",
    ):
        from_qrels_files({"dev": dev}, {"q1"}, "queries.tsv")


def test_a_split_with_no_judged_query(tmp_path):
    dev = write(tmp_path / "dev.qrels", "")
    with pytest.raises(DataError, match=r"dev.qrels \(split 'dev'\): split 'dev' has no judged"):
        from_qrels_files({"dev": dev}, {"q1"}, "queries.tsv")


def test_unknown_split_names(tmp_path):
    with pytest.raises(DataError, match=r"qrels_splits: unknown split 'validation'"):
        from_qrels_files({"validation": "x"}, set(), "queries.tsv")
    bad = write(tmp_path / "splits.tsv", "query_id\tsplit\nq1\ttrain\nq2\tvalid\n")
    with pytest.raises(DataError, match=r"splits.tsv:3: unknown split 'valid'"):
        from_split_file(bad, {"q1", "q2"}, "queries.tsv")


def test_split_file(tmp_path):
    path = write(tmp_path / "splits.tsv", "q1\ttrain\nq2\tdev\nq3\ttest\n")
    got = from_split_file(path, {"q1", "q2", "q3", "q4"}, "queries.tsv")
    assert got.split_of == {"q1": "train", "q2": "dev", "q3": "test"}
    twice = write(tmp_path / "twice.tsv", "q1\ttrain\nq1\ttest\n")
    with pytest.raises(DataError, match=r"twice.tsv:2: query 'q1' is in split 'test'"):
        from_split_file(twice, {"q1"}, "queries.tsv")
    unknown = write(tmp_path / "unknown.tsv", "q7\ttrain\n")
    with pytest.raises(DataError, match=r"unknown.tsv: 1 query ids absent from queries.tsv"):
        from_split_file(unknown, {"q1"}, "queries.tsv")


def test_split_assignment_reads_the_local_queries(tmp_path):
    corpus = write(tmp_path / "corpus.jsonl", '{"id": "d1", "text": "x"}\n')
    queries = write(tmp_path / "queries.tsv", "q1\tone\nq2\ttwo\n")
    train = write(tmp_path / "train.qrels", "q1 0 d1 1\n")
    source = SourceConfig(corpus=corpus, queries=queries, qrels_splits={"train": train})
    assert split_assignment(source).split_of == {"q1": "train"}
    assert split_assignment(SourceConfig(corpus=corpus, queries=queries)) is None


def test_nfcorpus_official_splits_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "irds"))
    ids = {s: f"beir/nfcorpus/{s}" for s in ("train", "dev", "test")}
    assert from_irds(ids, None).counts() == {"train": 2590, "dev": 324, "test": 323}
    with pytest.raises(DataError, match=r"irds_splits.dev: 'beir/nfcorpus/validation' is not"):
        from_irds({"dev": "beir/nfcorpus/validation"}, None)


def test_nested_subsets_grow_by_adding_queries():
    ids = [f"q{i}" for i in range(100)]
    small, large = nested_subset(ids, 10, 13), nested_subset(ids, 40, 13)
    assert len(small) == 10 and len(large) == 40 and set(small) <= set(large)
    assert nested_subset(ids, 10, 14) != small  # the seed decides the order
    assert nested_subset(ids, 500, 13) == sorted(ids)


def test_title_separator():
    assert full_text("Statins", "A cohort study.") == "Statins\nA cohort study."
    assert full_text("Statins", "A cohort study.", " ") == "Statins A cohort study."
    assert full_text("Statins", "A cohort study.", None) == "A cohort study."
    assert full_text("Statins", "", None) == "Statins"


def test_where_splits_come_from():
    assert SourceConfig(irds="cranfield").splits_from == "fractions"
    ids = {"train": "beir/nfcorpus/train"}
    assert SourceConfig(irds_splits=ids).splits_from == "irds_splits"
    local = SourceConfig(corpus="c.jsonl", queries="q.tsv", qrels="q.qrels", split_file="s.tsv")
    assert local.splits_from == "split_file" and local.has_own_splits


def test_no_offline_copy_names_where_it_is_expected_and_the_variable(tmp_path, monkeypatch):
    """Without ../shared beside the checkout (or $QPEFT_IRDS_SEED) ir_datasets tries to
    download and fails; the user gets one line: where the files are expected, and the
    variable that moves them."""
    from qpeft.data import irds

    empty = tmp_path / "seed"
    empty.mkdir()
    monkeypatch.setenv(irds.SEED_ENV, str(empty))
    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "home"))
    with pytest.raises(DataError) as caught:
        from_irds({"test": "vaswani"}, None)  # in no seed: ir_datasets downloads it
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "home") in message
    assert "../shared/datasets/ir_datasets" in message and str(irds.DEFAULT_SEED) in message
    assert f"$QPEFT_IRDS_SEED names (now {empty})" in message
    # Any other error of ir_datasets is its own.
    with pytest.raises(RuntimeError, match="disk full"):
        list(irds.offline(iter_raising(RuntimeError("disk full"))))


def iter_raising(error):
    raise error
    yield
