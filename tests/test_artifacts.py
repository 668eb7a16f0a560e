"""The one stamping rule every step's output folder follows, and the artifacts' readers."""

import json

import pytest

from qpeft.artifacts import PreparedData, Report, RerankRun, TrainingRun, digest, without
from qpeft.config import ConfigError


def test_a_folder_resumes_its_own_configuration_and_refuses_another(tmp_path):
    run = RerankRun(tmp_path / "run")
    run.claim("a", {"a": 1})
    (tmp_path / "run" / "run.trec").write_text("")
    run.claim("a", {"a": 1})  # the same configuration: resume
    with pytest.raises(ConfigError, match=r"set rerank\.overwrite=true"):
        run.claim("b", {"b": 1})
    run.claim("b", {"b": 1}, overwrite=True)
    assert not (tmp_path / "run" / "run.trec").exists()
    assert json.loads((tmp_path / "run" / "rerank_config.json").read_text())["hash"] == "b"


def test_a_refusal_names_the_key_that_differs(tmp_path):
    run = RerankRun(tmp_path / "run")
    earlier = {"model": {"name": "smollm2-135m", "dtype": "auto"}, "depth": 20}
    run.claim("a", earlier)
    (tmp_path / "run" / "run.trec").write_text("")
    now = {"model": {"name": "gemma3-270m", "dtype": "auto"}, "depth": 10}
    with pytest.raises(ConfigError) as refused:
        run.claim("b", now)
    message = str(refused.value)
    assert str(tmp_path / "run") in message and "\n" not in message
    assert "(depth is 20 there, 10 here (and 1 more))" in message
    later = {"model": {"name": "gemma3-270m", "dtype": "auto"}, "depth": 20}
    with pytest.raises(ConfigError) as refused:
        run.claim("c", later)
    assert "(model.name is 'smollm2-135m' there, 'gemma3-270m' here);" in str(refused.value)


def test_a_folder_holding_only_its_stamp_is_free_for_another_configuration(tmp_path):
    """A run that stopped before writing anything (its inputs failed a check) leaves
    nothing to protect."""
    run = TrainingRun(tmp_path / "run")
    run.claim("a", {})
    run.claim("b", {})
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["hash"] == "b"


def test_foreign_folders_are_refused_and_reports_are_replaced(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="was not written by qpeft evaluate"):
        Report(tmp_path / "mine").claim("a", {}, replace=True)
    report = Report(tmp_path / "report")
    report.claim("a", {}, replace=True)
    report.mark_complete()
    report.claim("b", {}, replace=True)  # a report of other runs replaces the old one
    assert not report.is_complete()
    legacy = tmp_path / "legacy"  # written before folders were stamped: its marker says so
    legacy.mkdir()
    (legacy / "report.json").write_text("{}")
    Report(legacy).claim("c", {}, replace=True)


def test_stamps_ignore_how_a_step_runs():
    config = {"train": {"lr": 0.1, "fail_at_step": 3}, "ray": {"num_cpus": 2}}
    same = {"train": {"lr": 0.1, "fail_at_step": None}, "ray": {"num_cpus": 8}}
    ignored = ("ray", "train.fail_at_step")
    assert digest(without(config, ignored)) == digest(without(same, ignored))
    assert digest(without(config, ignored)) != digest(without({"train": {"lr": 0.2}}, ignored))


def test_readers_name_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"rerank\.prepared_dir: .* not a complete"):
        PreparedData(tmp_path / "nothing").require_complete("rerank.prepared_dir")
    with pytest.raises(FileNotFoundError, match="no adapter"):
        TrainingRun(tmp_path / "run").best_adapter()
    assert RerankRun(tmp_path / "run").adapter_dir() is None
