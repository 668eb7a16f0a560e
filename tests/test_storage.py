"""Outputs on a local folder or a cloud URI, checked against a local S3 (moto): files and
folders round-trip, completion markers go up last, staging resumes from what the store
holds, and adapters, runs and evaluation reports work from s3:// paths."""

import json

import pyarrow.fs as pafs
import pytest

from pipelines.cli import main
from qpeft import storage
from qpeft.artifacts import RerankRun
from qpeft.config import ConfigError
from qpeft.data.readers import DataError
from qpeft.data.runs import read_run
from qpeft.loading.checkpoint import WEIGHTS_NAME, load_adapter, read_adapter_config, save_adapter
from qpeft.scoring.scorer import score_pairs
from tests.conftest import build_model
from tests.test_evaluate import QRELS, RUN, write_prepared_qa, write_trec


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_dir")


def test_files_and_folders_round_trip(base, tmp_path):
    path = storage.join(base, "a", "note.json")
    assert not storage.exists(path) and storage.list_dir(base) == []
    storage.write_text(path, '{"x": 1}')
    assert storage.exists(path) and json.loads(storage.read_text(path)) == {"x": 1}
    assert storage.is_nonempty_dir(storage.join(base, "a")) and storage.list_dir(base) == ["a"]
    local = tmp_path / "src"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "w.bin").write_bytes(b"\x00\x01")
    storage.copy(str(local), storage.join(base, "copy"))
    assert storage.read_text(storage.join(base, "copy", "sub", "w.bin")) == "\x00\x01"
    storage.remove(storage.join(base, "a"))
    assert not storage.exists(path) and storage.list_dir(base) == ["copy"]
    storage.remove(storage.join(base, "never-there"))  # missing is fine


def test_bad_uris_are_refused_with_the_path():
    with pytest.raises(ConfigError, match=r"s3://b/x\?endpoint_override=h: put endpoints"):
        storage.absolute("s3://b/x?endpoint_override=h")
    with pytest.raises(ConfigError, match="nosuch://b/x"):
        storage.exists("nosuch://b/x")


def test_upload_replaces_the_folder_and_sends_markers_last(s3_dir, tmp_path, monkeypatch):
    storage.write_text(storage.join(s3_dir, "stale.txt"), "old")
    local = tmp_path / "out"
    (local / "run").mkdir(parents=True)
    (local / "run" / "shard-0.parquet").write_text("x")
    (local / "_SUCCESS").write_text("")
    (local / "counts.json").write_text("{}")
    order = []
    copy = pafs.copy_files
    monkeypatch.setattr(
        storage.pafs, "copy_files", lambda src, dst, *a: (order.append(dst), copy(src, dst, *a))
    )
    storage.copy(local, s3_dir, markers=("_SUCCESS",))
    assert order[-1].endswith("/_SUCCESS") and len(order) == 3
    assert storage.list_dir(s3_dir) == ["_SUCCESS", "counts.json", "run"]


def test_staged_outputs_resume_from_the_store_and_upload_even_on_failure(s3_dir):
    with pytest.raises(RuntimeError), storage.staged(s3_dir, markers=("_SUCCESS",)) as out:
        (out / "run.partial").mkdir()
        (out / "run.partial" / "shard-0").write_text("first")
        raise RuntimeError("interrupted")
    # The finished part is kept; the marker never went up.
    assert storage.list_dir(s3_dir) == ["run.partial"]
    with storage.staged(s3_dir, markers=("_SUCCESS",)) as out:
        # A fresh stage starts from what the store holds.
        assert (out / "run.partial" / "shard-0").read_text() == "first"
        (out / "run.partial" / "shard-1").write_text("second")
        (out / "run.partial").rename(out / "run")
        (out / "_SUCCESS").write_text("")
    assert storage.list_dir(s3_dir) == ["_SUCCESS", "run"]  # nothing stale is left
    assert storage.list_dir(storage.join(s3_dir, "run")) == ["shard-0", "shard-1"]


def test_local_copy_downloads_each_version_once(s3_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "CACHE", tmp_path / "cache")
    storage.write_text(storage.join(s3_dir, "d", "f.txt"), "v1")
    first = storage.local_copy(storage.join(s3_dir, "d"))
    assert (first / "f.txt").read_text() == "v1"
    assert storage.local_copy(storage.join(s3_dir, "d")) == first
    storage.write_text(storage.join(s3_dir, "d", "f.txt"), "v2 is longer")
    second = storage.local_copy(storage.join(s3_dir, "d"))
    assert second != first and (second / "f.txt").read_text() == "v2 is longer"
    with pytest.raises(FileNotFoundError, match="missing"):
        storage.local_copy(storage.join(s3_dir, "missing"))


def test_claimed_cloud_folders_refuse_other_configs_and_foreign_files(s3_dir):
    run = RerankRun(s3_dir)
    run.claim("hash-a", {"a": 1}, overwrite=False)
    run.claim("hash-a", {"a": 1}, overwrite=False)  # same: resumes
    storage.write_text(storage.join(s3_dir, "run.trec"), "q 0 d 1 1.0 a\n")  # an output
    with pytest.raises(ConfigError, match="another configuration"):
        run.claim("hash-b", {"b": 1}, overwrite=False)
    run.claim("hash-b", {"b": 1}, overwrite=True)
    stamp = json.loads(storage.read_text(storage.join(s3_dir, "rerank_config.json")))
    assert stamp["hash"] == "hash-b"
    foreign = storage.join(s3_dir, "other")
    storage.write_text(storage.join(foreign, "data.csv"), "x")
    with pytest.raises(ConfigError, match="was not written by qpeft rerank"):
        RerankRun(foreign).claim("h", {}, overwrite=False)


def test_adapter_loads_from_a_cloud_uri(tiny, s3_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "CACHE", tmp_path / "cache")
    model = build_model(tiny, "qpeft_r", k=3)
    saved = save_adapter(model, tmp_path / "adapter")
    uri = storage.join(s3_dir, "adapter")
    storage.copy(str(saved), uri)
    assert read_adapter_config(uri)["method"] == "qpeft_r"
    loaded = load_adapter(uri, tiny)
    queries, docs = ["what is flow", "heat"], ["wing flow heat", "beta gamma"]
    assert score_pairs(loaded, queries, docs) == score_pairs(model, queries, docs)
    storage.remove(storage.join(uri, WEIGHTS_NAME))  # a new version: fetched again
    with pytest.raises(FileNotFoundError, match="adapter weights missing"):
        load_adapter(uri, tiny)
    with pytest.raises(FileNotFoundError, match=r"s3://.*/nothing/adapter_config.json"):
        load_adapter(storage.join(s3_dir, "nothing"), tiny)


def test_runs_read_from_cloud_files_and_incomplete_rerank_folders_are_refused(s3_dir, tmp_path):
    write_trec(tmp_path / "run.trec", RUN)
    storage.copy(str(tmp_path / "run.trec"), storage.join(s3_dir, "run.trec"))
    run = read_run(storage.join(s3_dir, "run.trec"))
    assert run["1"] == pytest.approx(RUN["1"])
    storage.write_text(storage.join(s3_dir, "rerank", "run", "part.parquet"), "not yet")
    with pytest.raises(DataError, match=r"s3://.*/rerank \(downloaded to .*incomplete"):
        read_run(storage.join(s3_dir, "rerank"))
    with pytest.raises(DataError, match="no such run"):
        read_run(storage.join(s3_dir, "nope.trec"))


def test_evaluate_reads_and_writes_cloud_storage(s3_dir, tmp_path, capsys):
    write_prepared_qa(tmp_path / "prepared")
    prepared = storage.join(s3_dir, "prepared")
    storage.copy(str(tmp_path / "prepared"), prepared)
    write_trec(tmp_path / "base.trec", RUN)
    storage.copy(str(tmp_path / "base.trec"), storage.join(s3_dir, "base.trec"))
    out = storage.join(s3_dir, "report")
    args = [
        f"evaluate.prepared_dir={prepared}",
        f"evaluate.runs={json.dumps({'base': storage.join(s3_dir, 'base.trec')})}",
        "evaluate.queries=judged",
        "evaluate.measures=[mrr@10]",
        f"evaluate.output_dir={out}",
    ]
    assert main(["evaluate", *(x for a in args for x in ("--set", a))]) == 0
    assert storage.list_dir(out) == [
        "evaluate_config.json",  # the stamp every step's folder carries
        "per_query.tsv",
        "report.json",
        "report.md",
        "report.png",
    ]
    report = json.loads(storage.read_text(storage.join(out, "report.json")))
    assert report["runs"]["base"]["mean"]["mrr@10"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert report["queries"] == len(QRELS)
    assert out in capsys.readouterr().out
