"""Stored document embeddings and search over them: exact inner product, or FAISS HNSW.

The embeddings of a prepared folder sit in `embeddings/shard-NNNNN.parquet`, one shard per
corpus shard (the unit that embedding resumes by): `doc_id` and `embedding`, a fixed-size
float32 list, null for an empty document (never embedded: an empty text's vector would sit
near every query). Each shard's schema metadata names the model and dimension.

Exact search streams the shards and keeps a running top-k per query, so its memory is one
shard's scores per query batch whatever the corpus size; its time grows with queries x
documents. HNSW (`dense.index: hnsw`, the `ann` extra) holds every vector in memory and
answers in time that hardly grows with the corpus: the choice between them is measured in
`benchmarks/dense_retrieval.py` (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from qpeft import storage
from qpeft.config import ConfigError
from qpeft.data.readers import DataError

FOLDER = "embeddings"
HNSW_NEIGHBOURS = 32  # FAISS's M: links per vector; memory per vector is about d*4 + M*8 bytes
ANN_INSTALL = "pip install 'qpeft-ray[ann]'"


class EmbeddingMismatchError(DataError):
    """Stored embeddings come from another model or dimension than the one configured."""


def shard_schema(model: str, dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=True),
        ],
        metadata={"model": model, "dim": str(dim)},
    )


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def shard_table(model: str, doc_ids: list[str], vectors: np.ndarray, missing: list[bool]):
    """One shard's rows from an (n, dim) array; rows flagged `missing` (empty documents)
    are stored as null."""
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    embeddings = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(missing, pa.bool_()))
    return pa.Table.from_arrays(
        [pa.array(doc_ids, pa.string()), embeddings], schema=shard_schema(model, dim)
    )


def stored_shards(folder: str) -> list[str]:
    """Paths of the finished shards in `folder` (a shard being written has another name)."""
    return [
        storage.join(folder, name)
        for name in storage.list_dir(folder)
        if name.startswith("shard-") and name.endswith(".parquet")
    ]


def check_stored(folder: str, model: str, dim: int) -> None:
    """Refuse to add shards of another model or dimension to stored ones (every shard is
    checked as it is written, so the first speaks for all)."""
    paths = stored_shards(folder)
    if not paths:
        return
    fs, inner = storage.resolve(paths[0])
    meta = pq.read_schema(inner, filesystem=fs).metadata
    stored_model, stored_dim = meta[b"model"].decode(), int(meta[b"dim"])
    if (stored_model, stored_dim) != (model, dim):
        raise EmbeddingMismatchError(
            f"{paths[0]} holds {stored_dim}-dimensional embeddings of {stored_model!r}, but "
            f"prepare.first_stage.dense.model is {model!r} ({dim} dimensions); use the same "
            f"model or delete {folder}"
        )


@dataclass
class StoredEmbeddings:
    """The finished embeddings of a prepared folder (local, or a cloud copy made local)."""

    folder: str

    @classmethod
    def of(cls, root: str) -> StoredEmbeddings:
        """A prepared folder's embeddings, downloaded once per node when `root` is a URI:
        search reads every shard once per batch of queries."""
        return cls(str(storage.local_copy(storage.join(root, FOLDER))))

    def shards(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """(doc_ids, vectors) per shard, empty documents left out."""
        for path in stored_shards(self.folder):
            table = storage.read_parquet(path)
            table = table.filter(pc.is_valid(table.column("embedding")))
            if table.num_rows == 0:
                continue
            dim = table.schema.field("embedding").type.list_size
            flat = table.column("embedding").combine_chunks().flatten()
            yield table.column("doc_id").to_pylist(), np.array(flat, np.float32).reshape(-1, dim)


def exact_search(
    queries: np.ndarray, store: StoredEmbeddings, k: int
) -> list[list[tuple[str, float]]]:
    """Top-k (doc_id, inner product) per query row, best first, over every stored shard;
    what is held is one shard and the running top k, whatever the corpus size."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_scores = torch.full((len(q), 0), float("-inf"))
    best_ids = np.empty((len(q), 0), dtype=object)
    for ids, vectors in store.shards():
        scores = torch.cat([best_scores, q @ torch.from_numpy(vectors).T], dim=1)
        candidates = np.concatenate(
            [best_ids, np.broadcast_to(np.array(ids, dtype=object), (len(q), len(ids)))], axis=1
        )
        best_scores, where = scores.topk(min(k, scores.shape[1]), dim=1)
        best_ids = np.take_along_axis(candidates, where.numpy(), axis=1)
    return [
        list(zip(row_ids.tolist(), row_scores.tolist(), strict=True))
        for row_ids, row_scores in zip(best_ids, best_scores, strict=True)
    ]


def hnsw_bytes(documents: int, dim: int) -> int:
    """What an HNSW index of this size holds in memory (vectors plus links)."""
    return documents * (dim * 4 + HNSW_NEIGHBOURS * 2 * 4)


def check_hnsw_memory(documents: int, dim: int, available: int) -> None:
    """Refuse, before anything is embedded, an index that cannot fit in memory."""
    needed = hnsw_bytes(documents, dim)
    if needed > available:
        raise ConfigError(
            f"prepare.first_stage.dense.index: hnsw needs about {needed / 2**30:.1f} GiB for "
            f"{documents} documents of {dim} dimensions and {available / 2**30:.1f} GiB is "
            "available; use dense.index: exact, which streams the stored embeddings and "
            "needs no more memory for a larger corpus"
        )


def require_faiss():
    """The faiss module, or the line that installs it."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            f"prepare.first_stage.dense.index: hnsw needs FAISS, which is not installed; "
            f"run: {ANN_INSTALL}"
        ) from None
    return faiss


class HnswIndex:
    """FAISS HNSW over the stored embeddings (inner product), built once per worker."""

    def __init__(self, store: StoredEmbeddings, search_depth: int):
        faiss = require_faiss()
        self.doc_ids: list[str] = []
        index = None
        for ids, vectors in store.shards():
            if index is None:
                index = faiss.IndexHNSWFlat(
                    vectors.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT
                )
            index.add(np.ascontiguousarray(vectors))
            self.doc_ids += ids
        if index is not None:
            index.hnsw.efSearch = max(2 * search_depth, 64)
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        if self.index is None:
            return [[] for _ in range(len(queries))]
        scores, index = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [
            [(self.doc_ids[i], float(s)) for i, s in zip(row_i, row_s, strict=True) if i >= 0]
            for row_i, row_s in zip(index, scores, strict=True)
        ]
