"""Adapter directories: `adapter_config.json` + `adapter_model.safetensors` (PEFT style).

The directory is the one artifact passed from training to reranking, tuning and serving.
It records the method, its hyperparameters, the template and the base model's name and
shape, so loading onto another base model fails with a message instead of nonsense scores.
Weights are safetensors only: loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file, save_file

from qpeft import __version__, storage
from qpeft.config import AdapterConfig, TemplateConfig, from_dict, to_dict
from qpeft.lm.backbone import Backbone
from qpeft.lm.packaged import PACKAGED_MODELS
from qpeft.loading.model_card import CARD_NAME, CONFIG_NAME, model_card
from qpeft.scoring.model import QPeftModel

WEIGHTS_NAME = "adapter_model.safetensors"
# 2: E' is saved as the rows it changed (`embed.ids`, `embed.delta`), not a dense table.
# 3: the hint MLP is residual (x + MLP(x)), E' includes the LM's embedding scale, Q-PEFT
#    reads document tokens only: the same weights mean a different model, so 2 is refused.
FORMAT = "qpeft-adapter/3"


class AdapterMismatchError(ValueError):
    """The adapter directory does not belong to the loaded base model."""


def base_model_card(name: str) -> dict:
    """Where the base model comes from and its license: a packaged alias names the hub
    repository it was quantized from (adapters inherit the base model's terms)."""
    packaged = PACKAGED_MODELS.get(name)
    return {
        "base_model_name_or_path": packaged.hub_id if packaged else name,
        "base_model_license": packaged.license if packaged else "see the base model's card",
    }


def save_adapter(
    model: QPeftModel, directory: str | Path, extra: dict | None = None, export: bool = True
) -> Path:
    """Write the adapter directory atomically (a temporary sibling renamed into place).
    `export: False` leaves out the method's extra copies (LoRA's `peft/`): for checkpoints."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    adapter, template = model.adapter, model.template.config
    config = {
        "format": FORMAT,
        "qpeft_version": __version__,
        "method": adapter.method,
        "adapter": to_dict(adapter.config),
        "hyperparameters": adapter.hyperparameters(),
        # The prompt as used, also where the config left it to the method's default.
        "template": to_dict(
            replace(template, prompt=template.prompt_for(adapter.method, adapter.config.hint_gate))
        ),
        "base_model": model.backbone.shape(),
        **base_model_card(model.backbone.name),
        "trainable_parameters": adapter.num_trainable_parameters(),
        **(extra or {}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if export:
            adapter.export(tmp, config["base_model_name_or_path"])
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(model_card(config))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


# owner/name, optionally @revision: how the Hub names a repository.
HUB_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def adapter_location(location: str | Path) -> str | Path:
    """Where to read an adapter from: a local folder or a cloud URI as given, a Hugging Face
    Hub repo id (`owner/name[@revision]`) as its local snapshot, downloaded once into the
    Hub cache (`HF_HUB_OFFLINE=1` reads that cache only)."""
    if not is_hub_repo(location):
        return location
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = str(location).partition("@")
    try:
        # The adapter's own files only: a repo id that names something else (a whole LM)
        # is not downloaded whole before it is found not to be an adapter.
        wanted = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]
        return snapshot_download(repo_id, revision=revision or None, allow_patterns=wanted)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        raise FileNotFoundError(
            f"{location}: no such local folder, and no Hub repository of that name could be "
            f"read ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None


def adapter_reference(location: str | Path) -> str:
    """How to name an adapter to Ray workers, which run in other folders and on other
    nodes: a local folder made absolute, a cloud URI or Hub repo id as given."""
    if is_hub_repo(location):
        return str(location)
    return storage.absolute(location)


def is_hub_repo(location: str | Path) -> bool:
    return (
        not storage.is_uri(location)
        and not Path(location).exists()
        and bool(HUB_REPO.match(str(location)))
    )


def read_adapter_config(directory: str | Path) -> dict:
    """The parsed `adapter_config.json` (of a local folder, a cloud URI or a Hub repo id),
    with errors that name the file."""
    directory = adapter_location(directory)
    path = storage.join(directory, CONFIG_NAME)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no adapter config (is {directory} an adapter directory?)")
    try:
        config = json.loads(storage.read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: format {config.get('format')!r} is not {FORMAT!r}")
    config["adapter"].setdefault("hint_gate", False)  # saved before the gate existed
    return config


def check_base_model(saved: dict, backbone: Backbone, where: str | Path) -> None:
    """Raise `AdapterMismatchError` unless the adapter fits `backbone`.

    The fingerprint (architecture and vocabulary) decides, so the same model under another
    name (an alias, its cache folder, its hub id) is accepted. Adapters saved before the
    fingerprint existed are checked by name and shape."""
    current = backbone.shape()
    if "fingerprint" in saved and saved["fingerprint"] == current["fingerprint"]:
        return
    keys = [
        k for k in current if k != "fingerprint" and ("fingerprint" not in saved or k != "name")
    ]
    diffs = [
        f"{key}: adapter has {saved.get(key)!r}, loaded model has {current[key]!r}"
        for key in keys
        if saved.get(key) != current[key]
    ]
    if "fingerprint" in saved:
        diffs.append("the architecture or vocabulary differs (base model fingerprint)")
    if diffs:
        raise AdapterMismatchError(
            f"{where} was trained on base model {saved.get('name')!r} and cannot be loaded onto "
            f"{current['name']!r}: " + "; ".join(diffs)
        )


def load_adapter(directory: str | Path, backbone: Backbone) -> QPeftModel:
    """Rebuild the model an adapter directory describes on `backbone`, weights included.
    A cloud URI or Hub repo id is downloaded once per node into a cache first."""
    directory = adapter_location(directory)
    config = read_adapter_config(directory)
    check_base_model(config["base_model"], backbone, directory)
    directory = storage.local_copy(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: adapter weights missing")
    state = load_file(str(weights), device=str(backbone.device))
    model = QPeftModel.build(
        backbone,
        from_dict(TemplateConfig, config["template"], "template"),
        from_dict(AdapterConfig, config["adapter"], "adapter"),
        trainable_ids=state.get("embed.ids"),  # E' rows the adapter trained
    )
    missing, unexpected = model.adapter.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise AdapterMismatchError(
            f"{weights}: weights do not match method {config['method']!r} "
            f"(missing {missing}, unexpected {unexpected})"
        )
    return model


def reranker_configs(
    template: TemplateConfig, adapter_dir: str | Path | None
) -> tuple[TemplateConfig, AdapterConfig]:
    """The template and adapter config `load_reranker` will use, read without the weights
    (drivers check inputs with them before any worker loads the model)."""
    if adapter_dir is None:
        return template, AdapterConfig(method="zero_shot")
    config = read_adapter_config(adapter_dir)
    return (
        from_dict(TemplateConfig, config["template"], "template"),
        from_dict(AdapterConfig, config["adapter"], "adapter"),
    )


def load_reranker(
    backbone: Backbone, template: TemplateConfig, adapter_dir: str | Path | None
) -> QPeftModel:
    """The model a reranking step scores with: zero-shot query likelihood with `template`
    when there is no adapter, else the saved adapter with the template it was trained with
    (a trained adapter only means something with its own template). In eval mode: no
    dropout, and pairs are laid out as they are scored."""
    if adapter_dir is None:
        return QPeftModel.build(backbone, template, AdapterConfig(method="zero_shot")).eval()
    return load_adapter(adapter_dir, backbone).eval()
