"""Typed run configuration, read from YAML with `--set key=value` overrides.

Every section is a dataclass. Loading is strict: an unknown key, a wrong type or an
out-of-range value raises `ConfigError` naming the dotted key, so a typo in a 50-line YAML
file fails before any model is loaded instead of silently falling back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from qpeft.methods import METHODS
from qpeft.training.losses import LOSSES


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key."""


@dataclass
class ModelConfig:
    """Which frozen causal LM to load and where it runs."""

    name: str = "smollm2-135m"
    # auto: bfloat16 where the device multiplies in it natively (GPUs; CPUs with AMX or
    # AVX-512-BF16), float32 elsewhere (qpeft/lm/hardware.py); decided where the model loads.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "cpu"
    trust_remote_code: bool = False
    cache_dir: str | None = None
    num_threads: int | None = None


# The pairwise hinge's margin when `loss.margin` is null: the authors tuned it per dataset
# between 0 and 1.1.
DEFAULT_MARGIN = 1.0
HINT_PROMPT = "given the hints, please generate a question for the input passage"
PLAIN_PROMPT = "please generate a question for the input passage"


@dataclass
class TemplateConfig:
    """Text pieces of the (q, d) layout (`qpeft/lm/template.py` draws the default)."""

    # P. null: the method's default, `HINT_PROMPT` (the paper's) for the methods that add
    # hints and `PLAIN_PROMPT` for zero-shot and the soft prompt, which have none.
    prompt: str | None = None
    passage_prefix: str = "Passage: "
    passage_suffix: str = " \n"
    hint_prefix: str = "hints: "
    hint_suffix: str = "\n"
    question: str = "Question: \n"
    hint_position: Literal["suffix", "prefix"] = "suffix"
    max_length: int = 300
    max_doc_tokens: int | None = None
    # Queries longer than this many tokens are cut to their first max_query_tokens
    # (`truncate`), left out (`skip`: training groups, rerank queries) or refused (`fail`).
    max_query_tokens: int = 64
    long_queries: Literal["truncate", "skip", "fail"] = "truncate"

    def prompt_for(self, method: str, hint_gate: bool = False) -> str:
        """The prompt text P for `method`. Gated hints start unseen (`adapter.hint_gate`),
        so their prompt is zero-shot's: an untrained adapter then reads exactly as zero-shot."""
        if self.prompt is not None:
            return self.prompt
        return HINT_PROMPT if METHODS[method].adds_hints and not hint_gate else PLAIN_PROMPT

    def validate(self) -> None:
        _require(self.max_length > 0, "template.max_length", "must be positive")
        _require(self.max_query_tokens > 0, "template.max_query_tokens", "must be positive")
        if self.max_doc_tokens is not None:
            _require(self.max_doc_tokens >= 0, "template.max_doc_tokens", "must be >= 0")


@dataclass
class AdapterConfig:
    """The QD module: method plus its hyperparameters (unused ones are ignored by a method)."""

    method: str = "qpeft_a"  # a name in qpeft.methods.METHODS
    k: int = 10
    similarity: Literal["cosine", "dot"] = "cosine"
    drop_query_tokens: bool = False
    stopwords: list[str] = field(default_factory=list)
    heads: int = 2
    dropout: float = 0.1
    # Q-PEFT-A: hint vectors from the first `max_hints` query tokens at most (null: one per
    # query token, up to template.max_query_tokens)
    max_hints: int | None = None
    # LoRA baseline (peft): rank, alpha and the LM's modules it adapts (null: peft's default
    # for the architecture, q_proj and v_proj for LLaMA and Gemma). Its dropout is `dropout`.
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_target_modules: list[str] | None = None
    # Q-PEFT-R/-A: the LM reads the hint block through a zero-initialised gate per layer
    # and head (LLaMA-Adapter's zero-init attention), so an untrained adapter ranks exactly
    # as zero-shot and training opens the gate as far as the hints help; false: the paper's
    # plain hint tokens. Adapters saved before this option load with false.
    hint_gate: bool = True
    # Q-PEFT-R/-A's starting weights. identity: hints start as real word embeddings (the
    # MLP is residual with a zero output layer; Q-PEFT-A's attention starts as a sharp
    # token match), so an untrained adapter reads as text. paper: the authors' code,
    # PyTorch's default init and hints = MLP(block) with no residual (random vectors at
    # the start). Adapters saved before this option load with identity.
    init: Literal["identity", "paper"] = "identity"

    def validate(self) -> None:
        check_choice(self.method, METHODS, "adapter.method")
        _require(self.k > 0, "adapter.k", "must be positive")
        _require(self.lora_rank > 0, "adapter.lora_rank", "must be positive")
        _require(self.lora_alpha > 0, "adapter.lora_alpha", "must be positive")
        _require(
            self.lora_target_modules is None or len(self.lora_target_modules) > 0,
            "adapter.lora_target_modules",
            "give at least one module name, or null for peft's default",
        )
        _require(
            self.max_hints is None or self.max_hints > 0, "adapter.max_hints", "must be positive"
        )
        _require(self.heads > 0, "adapter.heads", "must be positive")
        _require(0.0 <= self.dropout < 1.0, "adapter.dropout", "must be in [0, 1)")


@dataclass
class LossConfig:
    """Training objective over each query's group (positive first, then negatives)."""

    kind: str = "pairwise"  # a name in qpeft.training.losses.LOSSES
    # The pairwise hinge's margin; null: DEFAULT_MARGIN. Only `pairwise` has one: a margin
    # set with another loss is refused, since it would silently do nothing.
    margin: float | None = None
    pointwise_weight: float = 1.0
    in_batch_negatives: int = 1

    @property
    def hinge_margin(self) -> float:
        return DEFAULT_MARGIN if self.margin is None else self.margin

    def validate(self) -> None:
        check_choice(self.kind, LOSSES, "loss.kind")
        _require(self.margin is None or self.margin >= 0, "loss.margin", "must be >= 0")
        conflict(
            self.margin is not None and self.kind != "pairwise",
            ("loss.margin", self.margin),
            ("loss.kind", self.kind),
            "only the pairwise hinge has a margin",
        )
        _require(self.in_batch_negatives >= 0, "loss.in_batch_negatives", "must be >= 0")


@dataclass
class ScoringConfig:
    """Batching of the shared scorer."""

    # Pairs a forward pass. Document-major batches need room for a document's pairs (8.9
    # of them at depth 100 on NFCorpus): 64 measured fastest on 2 CPU cores in bf16 and
    # fp32 (docs/benchmarks.md).
    batch_size: int = 64
    # Reuse the shared prefix's keys/values across a batch. None = auto: on for CPU, where
    # it saves ~8% of the FLOPs; off on GPUs, where the extra launches cost more
    # (measurements in docs/benchmarks.md).
    share_prefix: bool | None = None
    # Document-major scoring holds the keys and values of at most this many prefix tokens
    # at once (a batch's rows x its longest document prefix); the bytes are layers x 2 x
    # kv_heads x head_dim x tokens x dtype bytes (`qpeft.scoring.model.prefix_bytes_per_token`).
    # It must hold one pair's prefix: at least template.max_length.
    prefix_token_budget: int = 8192

    def validate(self) -> None:
        _require(self.batch_size > 0, "scoring.batch_size", "must be positive")
        _require(self.prefix_token_budget > 0, "scoring.prefix_token_budget", "must be positive")

    def check_budget(self, template: TemplateConfig) -> None:
        """The budget must hold the longest prefix a pair can have (`max_length` tokens)."""
        _require(
            self.prefix_token_budget >= template.max_length,
            "scoring.prefix_token_budget",
            f"{self.prefix_token_budget} tokens cannot hold one document's prefix: it must be "
            f"at least template.max_length ({template.max_length})",
        )


@dataclass
class QPeftConfig:
    """The library's part of a run config; pipelines add their own sections beside it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)


def check_choice(value: str, registry: typing.Iterable[str], key: str) -> None:
    """`value` must name an entry of a registry (methods, losses)."""
    if value not in registry:
        raise ConfigError(f"{key}: {value!r} is not one of {list(registry)}")


def conflict(clash: bool, first: tuple[str, Any], second: tuple[str, Any], why: str) -> None:
    """Refuse two settings that contradict each other, in one line naming both keys."""
    if clash:
        raise ConfigError(
            f"{first[0]}: {first[1]!r} contradicts {second[0]}: {second[1]!r} ({why}); "
            "remove one of them"
        )


def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type hint `hint`, converting only where lossless."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if isinstance(value, bool) and {"on", "off"} <= set(allowed):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        (item_hint,) = typing.get_args(hint)
        return [_coerce(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        # PyYAML reads `1e-4` as a string; accept any number or numeric string.
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint!r}")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{prefix + '.' if prefix else ''}{unknown[0]}: unknown key "
            f"(valid keys: {', '.join(sorted(names))})"
        )
    kwargs = {
        name: _coerce(value, hints[name], f"{prefix + '.' if prefix else ''}{name}")
        for name, value in data.items()
    }
    obj = cls(**kwargs)
    validate(obj)
    return obj


def validate(obj: Any) -> None:
    """Run `validate()` on a config dataclass and on every nested section."""
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        if dataclasses.is_dataclass(child):
            validate(child)
    if hasattr(obj, "validate"):
        obj.validate()
    scoring, template = getattr(obj, "scoring", None), getattr(obj, "template", None)
    if isinstance(scoring, ScoringConfig) and isinstance(template, TemplateConfig):
        scoring.check_budget(template)


def set_dotted(data: dict, key: str, value: Any, where: str = "--set") -> None:
    """Set `a.b.c` in a nested mapping, creating sections on the way."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where} {key}: {part} is not a section")
    node[parts[-1]] = value


def override(cfg: Any, values: dict[str, Any], where: str = "--set") -> Any:
    """A copy of the config dataclass `cfg` with dotted keys set, checked as strictly as a
    loaded config (an unknown key or a wrong type raises ConfigError naming it)."""
    data = to_dict(cfg)
    for key, value in values.items():
        set_dotted(data, key, value, where)
    try:
        return from_dict(type(cfg), data)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings (value parsed as YAML) onto a nested mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        set_dotted(data, key, yaml.safe_load(raw))
    return data


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, naming the file in any error."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] = ()) -> Any:
    """Load config dataclass `cls` from an optional YAML file plus `--set` overrides."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        if path is not None:
            raise ConfigError(f"{path}: {err}") from None
        raise


def to_dict(obj: Any) -> dict:
    """Plain-dict form of a config, for JSON artifacts."""
    return dataclasses.asdict(obj)
