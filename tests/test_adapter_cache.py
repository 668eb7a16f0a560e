"""Adapters by name on one frozen LM (`qpeft.loading.adapter_cache`): loaded on first use, an LRU
bounded by count and bytes, new folders found without a restart, bad ones refused by name
while the others keep serving."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_TEMPLATE, WORDS, build_model, moved_off_start
from safetensors.torch import save_file

from qpeft.config import TemplateConfig
from qpeft.lm.backbone import tiny_backbone
from qpeft.loading.adapter_cache import (
    ZERO_SHOT,
    AdapterCache,
    AdapterNotFoundError,
    AdapterUnusableError,
    resident_bytes,
)
from qpeft.loading.checkpoint import CONFIG_NAME, FORMAT, WEIGHTS_NAME, save_adapter
from qpeft.scoring.mixed import score_mixed
from qpeft.scoring.scorer import score_pairs

QUERIES = ["what is flow", "heat wing"]
DOCS = ["wing flow heat boundary layer", "the wing"]


def write_adapters(tiny, root, names=("a1", "a2", "a3")) -> dict:
    saved = {}
    for seed, name in enumerate(names):
        model = moved_off_start(build_model(tiny, "qpeft_a", seed, {"prompt": None}, dropout=0.0))
        save_adapter(model, root / name)
        saved[name] = model
    return saved


def cache_for(tiny, root, max_bytes=2**30, max_count=8) -> AdapterCache:
    return AdapterCache(tiny, TemplateConfig(**TINY_TEMPLATE), str(root), max_bytes, max_count)


def test_adapters_load_on_first_use_and_score_as_saved(tiny, tmp_path):
    saved = write_adapters(tiny, tmp_path)
    cache = cache_for(tiny, tmp_path)
    assert cache.available() == ["a1", "a2", "a3"] and not cache.loaded
    model = cache.get("a2")
    assert cache.get("a2") is model and list(cache.loaded) == ["a2"]
    assert model.backbone is tiny  # one LM for every adapter
    expected = score_pairs(saved["a2"], QUERIES, DOCS)
    assert score_pairs(model, QUERIES, DOCS) == pytest.approx(expected, abs=1e-6)
    assert cache.get(ZERO_SHOT).method == "zero_shot"
    # Adapters from the cache mix in one batch, as they score alone.
    models = [cache.get("a1"), cache.get("a2"), cache.get(ZERO_SHOT)]
    owners = [0, 1, 2, 1]
    queries, docs = [*QUERIES, *QUERIES], [*DOCS, *DOCS]
    mixed = score_mixed(models, queries, docs, owners)
    pairs = zip(owners, queries, docs, strict=True)
    alone = [score_pairs(models[o], [q], [d])[0] for o, q, d in pairs]
    assert mixed == pytest.approx(alone, abs=1e-5)


def test_a_lora_adapter_gets_its_own_lm_and_leaves_the_shared_one_alone(tiny, tmp_path):
    lora = build_model(tiny, "lora", lora_rank=2)  # on a copy of the LM
    with torch.no_grad():
        for parameter in lora.adapter.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    save_adapter(lora.eval(), tmp_path / "lora")
    cache = cache_for(tiny, tmp_path)
    before = score_pairs(cache.get(ZERO_SHOT), QUERIES, DOCS)
    served = cache.get("lora")
    assert served.backbone is not tiny
    expected = score_pairs(lora, QUERIES, DOCS)
    assert score_pairs(served, QUERIES, DOCS) == pytest.approx(expected, abs=1e-5)
    assert score_pairs(cache.get(ZERO_SHOT), QUERIES, DOCS) == pytest.approx(before, abs=0)
    lm = sum(p.numel() * p.element_size() for p in served.backbone.model.parameters())
    assert cache.cached_bytes() == resident_bytes(served) >= lm  # its LM copy is counted


def test_the_cache_is_bounded_by_count_and_by_bytes(tiny, tmp_path):
    write_adapters(tiny, tmp_path)
    by_count = cache_for(tiny, tmp_path, max_count=2)
    for name in ("a1", "a2", "a1", "a3"):  # a1 used again: a2 is the least recent
        by_count.get(name)
    assert list(by_count.loaded) == ["a1", "a3"]
    size = resident_bytes(by_count.get("a1"))
    by_bytes = cache_for(tiny, tmp_path, max_bytes=2 * size + size // 2)
    for name in ("a1", "a2", "a3"):
        by_bytes.get(name)
    assert list(by_bytes.loaded) == ["a2", "a3"] and by_bytes.cached_bytes() == 2 * size
    too_small = cache_for(tiny, tmp_path, max_bytes=size - 1)
    with pytest.raises(AdapterUnusableError, match="more than the whole cache"):
        too_small.get("a1")
    assert not too_small.loaded


def test_an_adapter_written_after_start_up_is_served_without_a_restart(tiny, tmp_path):
    write_adapters(tiny, tmp_path, names=("a1",))
    cache = cache_for(tiny, tmp_path)
    with pytest.raises(AdapterNotFoundError, match="no adapter named 'late'"):
        cache.get("late")
    write_adapters(tiny, tmp_path, names=("late",))
    assert "late" in cache.available() and cache.get("late").method == "qpeft_a"


def test_missing_corrupt_and_foreign_adapters_are_refused_by_name(tiny, tmp_path):
    write_adapters(tiny, tmp_path, names=("good", "corrupt", "no_weights", "misshapen", "odd"))
    (tmp_path / "corrupt" / WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    (tmp_path / "no_weights" / WEIGHTS_NAME).unlink()
    save_file({"mlp.0.weight": torch.zeros(3, 3)}, tmp_path / "misshapen" / WEIGHTS_NAME)
    (tmp_path / "odd" / CONFIG_NAME).write_text(json.dumps({"format": FORMAT}))  # no "adapter"
    other_lm = tiny_backbone([*WORDS, "extra"], hidden_size=32, num_layers=2, num_heads=4)
    foreign = build_model(other_lm, "qpeft_a", template={"prompt": None})
    save_adapter(foreign, tmp_path / "foreign")
    cache = cache_for(tiny, tmp_path)
    with pytest.raises(AdapterNotFoundError, match="'missing'"):
        cache.get("missing")
    with pytest.raises(AdapterNotFoundError):
        cache.get("../good")  # only folder names under the root
    with pytest.raises(AdapterNotFoundError, match="'someone/model'"):
        cache.get("someone/model")  # Hub ids only with serve.allow_hub_adapters
    with pytest.raises(AdapterUnusableError, match="'corrupt' cannot be served"):
        cache.get("corrupt")
    with pytest.raises(AdapterUnusableError, match=r"'no_weights'.*weights missing"):
        cache.get("no_weights")
    with pytest.raises(AdapterUnusableError, match=r"'foreign' cannot be served.*base model"):
        cache.get("foreign")
    with pytest.raises(AdapterUnusableError, match="'misshapen' cannot be served"):
        cache.get("misshapen")
    with pytest.raises(AdapterUnusableError, match="'odd' cannot be served"):
        cache.get("odd")
    # A client reads the adapter's name, never the server's folders.
    for name in ("missing", "corrupt", "no_weights", "foreign", "misshapen", "odd"):
        with pytest.raises((AdapterNotFoundError, AdapterUnusableError)) as refused:
            cache.get(name)
        assert str(tmp_path) not in str(refused.value)
    # The listing names the bad folder instead of failing as a whole.
    assert "error" in cache.describe("odd") and cache.describe("good")["method"] == "qpeft_a"
    assert cache.get("good").method == "qpeft_a" and list(cache.loaded) == ["good"]


def test_describe_says_what_each_adapter_is(tiny, tmp_path):
    write_adapters(tiny, tmp_path, names=("a1",))
    cache = cache_for(tiny, tmp_path)
    before = cache.describe("a1")
    assert before["method"] == "qpeft_a" and before["loaded"] is False
    assert before["fingerprint"] == tiny.shape()["fingerprint"]
    assert before["bytes_on_disk"] == (tmp_path / "a1" / WEIGHTS_NAME).stat().st_size
    cache.get("a1")
    after = cache.describe("a1")
    assert after["loaded"] is True and after["bytes_in_memory"] == cache.cached_bytes()
    assert cache.describe(ZERO_SHOT)["method"] == "zero_shot"
