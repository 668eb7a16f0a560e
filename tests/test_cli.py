from pipelines.cli import main


def test_unknown_step_and_help(capsys):
    assert main(["nope"]) == 2
    assert "unknown step 'nope'" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_config_errors_exit_2_and_name_the_key(capsys):
    assert main(["demo", "--set", "demo.rerank_queries=many"]) == 2
    assert "demo.rerank_queries: expected an integer" in capsys.readouterr().err
    assert main(["demo", "--set", "demo.methods=[qpeft_b]"]) == 2
    assert "demo.methods: 'qpeft_b' is not one of" in capsys.readouterr().err
    assert main(["demo", "--set", "demo.methods=[]"]) == 2
    assert "demo.methods: name at least one method to train" in capsys.readouterr().err
    # The demo reads zero-shot's dev figures from each adapter's untrained start.
    assert main(["demo", "--set", "adapter.hint_gate=false"]) == 2
    assert "adapter.hint_gate: the demo reads zero-shot's dev figures" in capsys.readouterr().err


def test_train_rejects_zero_shot(capsys):
    assert main(["train", "--set", "adapter.method=zero_shot"]) == 2
    assert "adapter.method: zero_shot has nothing to train" in capsys.readouterr().err
