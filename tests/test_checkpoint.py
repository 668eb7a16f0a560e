import copy
import json

import pytest
import torch

from qpeft.backbone import tiny_backbone
from qpeft.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterMismatchError,
    load_adapter,
    save_adapter,
)
from qpeft.config import METHODS
from qpeft.scoring import score_pairs
from tests.conftest import WORDS, build_model

QUERIES = ["what is flow", "heat", "alpha"]
DOCS = ["wing flow heat", "layer of heat", "beta gamma"]


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_gives_identical_scores(tiny, tmp_path, method):
    model = build_model(tiny, method, k=3, template={"hint_position": "prefix"})
    with torch.no_grad():  # move the weights off their initial values
        for p in model.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    before = score_pairs(model, QUERIES, DOCS)
    directory = save_adapter(model, tmp_path / "adapter")
    extra = ["peft"] if method == "lora" else []
    assert sorted(p.name for p in directory.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME, *extra]
    config = json.loads((directory / CONFIG_NAME).read_text())
    assert config["method"] == method and config["base_model"]["hidden_size"] == tiny.hidden_size
    assert config["template"]["hint_position"] == "prefix"
    loaded = load_adapter(directory, copy.deepcopy(tiny) if method == "lora" else tiny)
    assert score_pairs(loaded, QUERIES, DOCS) == before


def test_loading_onto_another_base_model_fails_clearly(tiny, tmp_path):
    directory = save_adapter(build_model(tiny, "qpeft_a"), tmp_path / "adapter")
    wider = tiny_backbone(WORDS, hidden_size=48, num_heads=4, name="tiny-llama")
    with pytest.raises(
        AdapterMismatchError, match="hidden_size: adapter has 32, loaded model has 48"
    ):
        load_adapter(directory, wider)
    other_words = tiny_backbone([*WORDS[1:], "omega"], hidden_size=32, name="tiny-llama")
    with pytest.raises(AdapterMismatchError, match="vocabulary differs"):
        load_adapter(directory, other_words)
    # The same architecture and vocabulary under another name (an alias, its cache folder,
    # its hub id) is the same base model.
    renamed = tiny_backbone(WORDS, hidden_size=32, name="/models/tiny-llama")
    assert load_adapter(directory, renamed).backbone.name == "/models/tiny-llama"


def test_adapters_without_a_fingerprint_are_checked_by_name(tiny, tmp_path):
    directory = save_adapter(build_model(tiny, "qpeft_a"), tmp_path / "adapter")
    config = json.loads((directory / CONFIG_NAME).read_text())
    del config["base_model"]["fingerprint"]
    (directory / CONFIG_NAME).write_text(json.dumps(config))
    load_adapter(directory, tiny)
    renamed = tiny_backbone(WORDS, hidden_size=32, name="other-llama")
    with pytest.raises(AdapterMismatchError, match="trained on base model 'tiny-llama'"):
        load_adapter(directory, renamed)


def test_missing_or_foreign_directory(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="no adapter config"):
        load_adapter(tmp_path, tiny)
    (tmp_path / CONFIG_NAME).write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="is not 'qpeft-adapter/3'"):
        load_adapter(tmp_path, tiny)
