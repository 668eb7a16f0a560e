import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from qpeft.lm.backbone import tiny_backbone
from qpeft.loading.checkpoint import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterMismatchError,
    adapter_location,
    adapter_reference,
    load_adapter,
    save_adapter,
)
from qpeft.methods import METHODS
from qpeft.scoring.scorer import score_pairs
from tests.conftest import WORDS, build_model

QUERIES = ["what is flow", "heat", "alpha"]
DOCS = ["wing flow heat", "layer of heat", "beta gamma"]


@pytest.mark.parametrize("method", list(METHODS))
def test_round_trip_gives_identical_scores(tiny, tmp_path, method):
    model = build_model(tiny, method, k=3, template={"hint_position": "prefix"})
    with torch.no_grad():  # move the weights off their initial values
        for p in model.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    before = score_pairs(model, QUERIES, DOCS)
    directory = save_adapter(model, tmp_path / "adapter")
    extra = ["peft"] if method == "lora" else []
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, *extra]
    )
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


def test_the_model_card_names_the_base_and_the_dev_figures(tiny, tmp_path):
    import yaml

    extra = {
        "training": {"data": "runs/prepare/x", "split": "train", "settings": {"loss": "listwise"}},
        "dev_ndcg10": 0.3126,
        "epoch": 1,
        "fusion": {"weight": 0.65, "dev_ndcg10": 0.3204, "normalisation": "minmax per query"},
    }
    directory = save_adapter(build_model(tiny, "qpeft_a"), tmp_path / "adapter", extra=extra)
    card = (directory / CARD_NAME).read_text()
    _, header, body = card.split("---\n", 2)
    meta = yaml.safe_load(header)
    assert meta["base_model"] == "tiny-llama" and meta["library_name"] == "qpeft-ray"
    assert "q-peft" in meta["tags"] and meta["license"] == "other"
    assert "| dev NDCG@10 | 0.3126 (epoch 1) |" in body
    assert "weight 0.65" in body and "`runs/prepare/x`, split `train`" in body
    # A weight given by hand (no dev figure, no training record) still makes a card.
    bare = save_adapter(
        build_model(tiny, "qpeft_a"), tmp_path / "bare", extra={"fusion": {"weight": 0.3}}
    )
    assert (
        "| fusion with the first stage | weight 0.3 (minmax per query) |"
        in (bare / CARD_NAME).read_text()
    )


def fake_hub_snapshot(hub: Path, repo_id: str, files: Path) -> Path:
    """The Hub cache layout `snapshot_download` reads offline: refs/main names a commit
    whose snapshot folder holds the files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(files, repo / "snapshots" / commit)
    return repo / "snapshots" / commit


def test_an_adapter_loads_from_a_hub_repo_id_offline(tiny, tmp_path, monkeypatch):
    from huggingface_hub import constants

    model = build_model(tiny, "qpeft_r", k=3)
    saved = save_adapter(model, tmp_path / "adapter")
    snapshot = fake_hub_snapshot(tmp_path / "hub", "acme/qpeft-tiny", saved)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # "acme/qpeft-tiny" is no local folder here
    assert adapter_reference("acme/qpeft-tiny") == "acme/qpeft-tiny"
    assert Path(adapter_location("acme/qpeft-tiny")) == snapshot
    loaded = load_adapter("acme/qpeft-tiny", tiny)
    assert score_pairs(loaded, QUERIES, DOCS) == score_pairs(model, QUERIES, DOCS)
    with pytest.raises(FileNotFoundError, match="acme/missing: no such local folder"):
        load_adapter("acme/missing", tiny)
    # A local folder of the same shape wins over the Hub.
    (tmp_path / "acme").mkdir()
    shutil.copytree(saved, tmp_path / "acme" / "local")
    assert adapter_location("acme/local") == "acme/local"
