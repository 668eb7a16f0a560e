import pytest

from qpeft.config import ConfigError, QPeftConfig, load_config


def test_defaults_load_and_overrides_apply():
    cfg = load_config(
        QPeftConfig, None, ["adapter.method=qpeft_r", "adapter.k=5", "loss.margin=1e-1"]
    )
    assert cfg.adapter.method == "qpeft_r"
    assert cfg.adapter.k == 5
    assert cfg.loss.margin == pytest.approx(0.1)  # YAML reads 1e-1 as a string; cast to float


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("adapter.kk=3", "adapter.kk: unknown key"),
        ("adapter.k=three", "adapter.k: expected an integer"),
        ("adapter.method=bogus", "adapter.method: 'bogus' is not one of"),
        ("adapter.k=0", "adapter.k: must be positive"),
        ("template.hint_position=middle", "template.hint_position"),
        ("model=3", "model: expected a mapping"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(QPeftConfig, None, [override])


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("adapter:\n  dropout: 2.0\n")
    with pytest.raises(ConfigError, match=rf"{path}: adapter.dropout"):
        load_config(QPeftConfig, path)
    path.write_text("adapter: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(QPeftConfig, path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(QPeftConfig, tmp_path / "missing.yaml")
