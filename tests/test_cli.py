import json

import pytest

from pipelines.cli import main


def test_unknown_step_and_help(capsys):
    assert main(["nope"]) == 2
    assert "unknown step 'nope'" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_config_errors_exit_2_and_name_the_key(capsys):
    assert main(["demo", "--set", "demo.num_queries=many"]) == 2
    assert "demo.num_queries: expected an integer" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_runs_end_to_end_offline(tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "--set",
        "demo.num_queries=2",
        "--set",
        "demo.depth=5",
        "--set",
        f"demo.output_dir={out}",
    ]
    assert main(["demo", *args]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["queries"] == 2 and set(report["ndcg@10"]) == {"bm25", "zero_shot"}
    assert all(0.0 <= v <= 1.0 for v in report["ndcg@10"].values())
    run = (out / "zero_shot.trec").read_text().splitlines()
    assert len(run) == 10 and all(len(line.split()) == 6 for line in run)
    assert "| zero_shot |" in capsys.readouterr().out


def test_train_rejects_zero_shot(capsys):
    assert main(["train", "--set", "adapter.method=zero_shot"]) == 2
    assert "adapter.method: zero_shot has nothing to train" in capsys.readouterr().err
