"""Text embeddings for the dense first stage, through sentence-transformers.

sentence-transformers reads a model folder's own module stack (transformer, pooling,
normalisation, any dense projection), so any embedding model published in its layout works
by Hub id or folder without code here knowing its pooling. Chosen over hand-written mean
pooling for that reason: CLS-pooled (BGE) and last-token-pooled models differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from qpeft.config import ConfigError
from qpeft.lm.packaged import PACKAGED_EMBEDDERS


@dataclass
class DenseConfig:
    """The embedding model of `prepare.first_stage.dense` and how it runs."""

    # A packaged alias (all-minilm-l6-v2, from the PyPI wheel), a Hub id or a local folder.
    model: str = "all-minilm-l6-v2"
    # Texts are cut at this many tokens; null: the model's own limit (256 for MiniLM).
    max_tokens: int | None = None
    # Instruction prefixes some models expect (E5: "query: " / "passage: "); "" for MiniLM.
    query_prefix: str = ""
    document_prefix: str = ""
    # exact: inner product over every stored vector, streamed (memory does not grow with the
    # corpus); hnsw: FAISS HNSW, approximate, every vector in memory (the `ann` extra).
    index: Literal["exact", "hnsw"] = "exact"
    # auto: bfloat16 where the device multiplies in it natively (2.7x MiniLM's fp32 speed on
    # an AMX CPU, cosine to the fp32 vectors >= 0.996), float32 elsewhere; vectors are
    # stored in float32 either way.
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # How to run, not what is produced (left out of the prepared folder's stamp).
    batch_size: int = 64
    device: str = "cpu"
    actors: int = 1
    trust_remote_code: bool = False

    def validate(self) -> None:
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ConfigError("prepare.first_stage.dense.max_tokens: must be positive or null")
        if self.batch_size <= 0 or self.actors <= 0:
            raise ConfigError("prepare.first_stage.dense.batch_size and .actors: must be positive")


def model_path(name: str) -> str:
    """A packaged alias unpacked into the model cache (once); ids and folders as given."""
    if name in PACKAGED_EMBEDDERS:
        from qpeft.lm.backbone import convert_packaged, default_cache_dir

        return str(convert_packaged(name, default_cache_dir()))
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


class Encoder:
    """One loaded embedding model: texts in, float32 rows out (unit length if the model
    normalises; inner product is then cosine)."""

    def __init__(self, config: DenseConfig):
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        from qpeft.lm.hardware import resolve_dtype

        transformers_logging.disable_progress_bar()  # one bar per actor, in every log
        self.config = config
        try:
            self.model = SentenceTransformer(
                model_path(config.model),
                device=config.device,
                trust_remote_code=config.trust_remote_code,
                model_kwargs={"dtype": getattr(torch, resolve_dtype(config.dtype, config.device))},
            )
        except OSError as err:  # a Hub id with no network, or a folder that is not a model
            raise ConfigError(
                f"prepare.first_stage.dense.model: cannot load {config.model!r} ({err}); give "
                f"a packaged alias ({', '.join(PACKAGED_EMBEDDERS)}), a model folder or a "
                "reachable Hub id"
            ) from None
        if config.max_tokens is not None:
            self.model.max_seq_length = config.max_tokens

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: list[str], queries: bool) -> np.ndarray:
        prefix = self.config.query_prefix if queries else self.config.document_prefix
        vectors = self.model.encode(
            [prefix + t for t in texts],
            batch_size=self.config.batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)
