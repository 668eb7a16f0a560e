"""Many adapters on one frozen LM: loaded on first use, kept in an LRU cache bounded by bytes
and by count, found by name under an adapter root (a local folder or a cloud URI) or as a
Hugging Face Hub repo id.

An adapter written under the root after start-up is found by its name on its first request;
one that is missing, corrupt or trained on another base model raises an error naming it,
and the cache and every other adapter are left as they were. Sizes count what the adapter
itself holds in memory (its parameters and buffers), never the shared LM.
"""

from __future__ import annotations

import copy
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from qpeft import storage
from qpeft.config import TemplateConfig
from qpeft.lm.backbone import Backbone
from qpeft.loading.checkpoint import (
    WEIGHTS_NAME,
    AdapterMismatchError,
    is_hub_repo,
    load_reranker,
    read_adapter_config,
)
from qpeft.scoring.model import QPeftModel

ZERO_SHOT = "zero-shot"  # the name that asks for no adapter at all
# One folder name under the root: no separators, nothing hidden, no "..".
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class AdapterNotFoundError(LookupError):
    """No adapter of that name under the root, nor on the Hub (HTTP 404)."""


class AdapterUnusableError(ValueError):
    """An adapter that exists but cannot be served: corrupt, another base model, too large
    for the cache (HTTP 422)."""


@dataclass
class LoadedAdapter:
    model: QPeftModel
    bytes: int
    location: str | None  # None: zero-shot
    fusion_weight: float | None  # the weight its training chose on dev, if any


def resident_bytes(model: QPeftModel) -> int:
    """Bytes the adapter's own tensors take (parameters and buffers), not the shared LM's;
    for a method that needs an LM of its own (LoRA), that whole copy, its weights inside."""
    return tensor_bytes(model.backbone.model if model.adapter.changes_lm_weights else model.adapter)


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


class AdapterCache:
    """Adapters by name for one backbone; thread-safe (Serve handlers and batch threads)."""

    def __init__(
        self,
        backbone: Backbone,
        template: TemplateConfig,
        root: str | None,
        max_bytes: int,
        max_count: int,
        allow_hub: bool = False,
    ):
        self.backbone = backbone
        # Off by default: a Hub id from a request would make the replica download any repo.
        self.allow_hub = allow_hub
        self.template = template  # zero-shot's; a trained adapter brings its own
        self.root = root
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self.pinned: dict[str, LoadedAdapter] = {}  # never evicted: zero-shot, the default
        self.lock = threading.RLock()
        self.pin(ZERO_SHOT, None)

    def pin(self, name: str, location: str | None, own_lm_for_lora: bool = True) -> LoadedAdapter:
        """Load an adapter (None: zero-shot) that stays loaded outside the LRU, as `name`.
        `own_lm_for_lora=False`: a LoRA adapter goes into the shared LM itself (a service
        that serves nothing else needs no second copy)."""
        with self.lock:
            if name in self.pinned:
                raise ValueError(f"an adapter is already pinned as {name!r}")
            self.pinned[name] = self._load(name, location, own_lm_for_lora)
            return self.pinned[name]

    def location(self, name: str) -> str:
        """Where adapter `name` lives: a folder under the root, else a Hub repo id."""
        if self.root is not None and ADAPTER_NAME.match(name):
            under_root = storage.join(self.root, name)
            if storage.exists(storage.join(under_root, "adapter_config.json")):
                return under_root
        if self.allow_hub and is_hub_repo(name):
            return name
        # Clients see the adapter's name, never where the server keeps its adapters.
        where = "under serve.adapter_root" if self.root else "(no serve.adapter_root is configured)"
        raise AdapterNotFoundError(f"model: no adapter named {name!r} {where}")

    def _public(self, err: Exception) -> str:
        """An error's text as a client may read it: paths under the root are told relative
        to it (`name/adapter_model.safetensors`), the root itself never."""
        text = str(err)
        if self.root:
            root = str(self.root).rstrip("/")
            text = text.replace(root + "/", "").replace(root, "serve.adapter_root")
        return text

    def get(self, name: str) -> QPeftModel:
        """The model for adapter `name` (`zero-shot`: no adapter), loading it on first use."""
        return self.entry(name).model

    def entry(self, name: str) -> LoadedAdapter:
        """Adapter `name` loaded, with its size and fusion weight; the least recently used
        ones are dropped to keep the cache within its bytes and count."""
        with self.lock:
            if name in self.pinned:
                return self.pinned[name]
            if name in self.loaded:
                self.loaded.move_to_end(name)
                return self.loaded[name]
            entry = self._load(name, self.location(name))
            if entry.bytes > self.max_bytes:
                raise AdapterUnusableError(
                    f"model: adapter {name!r} needs {entry.bytes / 2**20:.1f} MiB, more than "
                    f"the whole cache (serve.adapter_cache_mb={self.max_bytes / 2**20:.0f})"
                )
            while self.loaded and (
                len(self.loaded) >= self.max_count
                or self.cached_bytes() + entry.bytes > self.max_bytes
            ):
                self.loaded.popitem(last=False)
            self.loaded[name] = entry
            return entry

    def _load(self, name: str, location: str | None, own_lm_for_lora: bool = True) -> LoadedAdapter:
        if location is None:
            model = load_reranker(self.backbone, self.template, None)
            return LoadedAdapter(model, resident_bytes(model), None, None)
        try:
            config = read_adapter_config(location)
        except FileNotFoundError as err:
            raise AdapterNotFoundError(f"model: adapter {name!r}: {self._public(err)}") from None
        except (ValueError, KeyError, OSError) as err:
            raise AdapterUnusableError(
                f"model: adapter {name!r} cannot be served: {self._public(err)}"
            ) from None
        backbone = self.backbone
        if config.get("method") == "lora" and own_lm_for_lora:
            # LoRA puts weights into the LM: it gets an LM of its own, never the shared one,
            # refused before copying when that copy alone is over the cache's bound.
            lm_bytes = tensor_bytes(backbone.model)
            if lm_bytes > self.max_bytes:
                raise AdapterUnusableError(
                    f"model: adapter {name!r} is LoRA and needs its own copy of the LM "
                    f"({lm_bytes / 2**20:.0f} MiB), more than serve.adapter_cache_mb"
                )
            backbone = copy.deepcopy(backbone)
        try:
            model = load_reranker(backbone, self.template, location)
        except (
            AdapterMismatchError,
            SafetensorError,
            FileNotFoundError,
            ValueError,
            KeyError,
            RuntimeError,  # tensors of the wrong shape
            OSError,
        ) as err:
            raise AdapterUnusableError(
                f"model: adapter {name!r} cannot be served: {self._public(err)}"
            ) from None
        fusion = (config.get("fusion") or {}).get("weight")
        return LoadedAdapter(model, resident_bytes(model), str(location), fusion)

    def cached_bytes(self) -> int:
        """Bytes of the adapters in the LRU (the pinned ones are not counted)."""
        return sum(entry.bytes for entry in self.loaded.values())

    def available(self) -> list[str]:
        """Adapter folders under the root now (written after start-up included)."""
        if self.root is None or not storage.exists(self.root):
            return []
        return sorted(
            name
            for name in storage.list_dir(self.root)
            if ADAPTER_NAME.match(name)
            and storage.exists(storage.join(self.root, name, "adapter_config.json"))
        )

    def describe(self, name: str) -> dict:
        """What `GET /v1/models` says of one adapter: method, base model, fingerprint, size
        on disk, fusion weight, and whether it is loaded (with its bytes in memory)."""
        with self.lock:
            entry = self.pinned.get(name) or self.loaded.get(name)
        if entry is not None and entry.location is None:
            return {
                "id": name,
                "method": "zero_shot",
                "base_model": self.backbone.name,
                "fingerprint": self.backbone.shape()["fingerprint"],
                "fusion_weight": None,
                "loaded": True,
                "bytes_in_memory": entry.bytes,
            }
        try:
            location = entry.location if entry else self.location(name)
            config = read_adapter_config(location)
            method, base = config["method"], config["base_model"]
        except (AdapterNotFoundError, FileNotFoundError, ValueError, KeyError, OSError) as err:
            return {"id": name, "error": str(err), "loaded": entry is not None}
        weights = storage.join(location, WEIGHTS_NAME)
        local = not storage.is_uri(location) and Path(str(weights)).exists()
        fusion = config.get("fusion") or {}
        return {
            "id": name,
            "method": method,
            "base_model": base.get("name"),
            "fingerprint": base.get("fingerprint"),
            "bytes_on_disk": Path(str(weights)).stat().st_size if local else None,
            "fusion_weight": fusion.get("weight"),
            "loaded": entry is not None,
            "bytes_in_memory": entry.bytes if entry else None,
        }
