"""The dense first stage's cost: embedding speed, and exact search against FAISS HNSW.

1. Embedding: documents/s of the packaged all-MiniLM-L6-v2 through `qpeft.embedding.Encoder`
   (sentence-transformers) in float32 and bfloat16, side by side with a plain transformers
   loop (tokenise, forward, mean-pool, normalise) in float32, on Cranfield's documents.
2. Search over N random unit vectors stored as the prepare step stores them (parquet shards
   of 2,000): exact streamed search (`exact_search`) and FAISS HNSW (build, then search), the
   seconds for Q queries and the process's peak RSS above its start during each. From the
   two, the number of queries past which HNSW's build pays for itself at that N.

    python benchmarks/dense_retrieval.py --docs 100000 1000000 --hnsw-max 300000
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import torch

from qpeft.data import irds
from qpeft.data.dense_index import (
    HnswIndex,
    StoredEmbeddings,
    exact_search,
    shard_name,
    shard_table,
)
from qpeft.embedding import DenseConfig, Encoder, model_path
from qpeft.lm.hardware import detect

DIM = 384
SHARD = 2000


class Peak:
    """Peak RSS of this process above its level at entry, sampled every 5 ms."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        self.began = time.perf_counter()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.began
        self.stop.set()
        self.thread.join()

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def plain_transformers(texts: list[str], batch_size: int) -> float:
    """Seconds for a plain transformers mean-pooling loop over `texts` (float32)."""
    from transformers import AutoModel, AutoTokenizer

    path = model_path("all-minilm-l6-v2")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=256,
                return_tensors="pt",
            )  # fmt: skip
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            torch.nn.functional.normalize(pooled, dim=-1)
    return time.perf_counter() - start


def embedding(n_docs: int, batch_size: int) -> None:
    texts = [text for _, text in irds.iter_docs(irds.load("cranfield"))][:n_docs]
    rates = {}
    for dtype in ("float32", "bfloat16"):
        encoder = Encoder(DenseConfig(dtype=dtype, batch_size=batch_size))
        encoder.encode(texts[:batch_size], queries=False)  # warm-up
        start = time.perf_counter()
        encoder.encode(texts, queries=False)
        rates[dtype] = len(texts) / (time.perf_counter() - start)
    rates["plain transformers float32"] = len(texts) / plain_transformers(texts, batch_size)
    threads = torch.get_num_threads()
    for name, rate in rates.items():
        print(f"embed {name:27s} {rate:7.1f} docs/s ({rate / threads:6.1f} per thread)")
    plain = rates["plain transformers float32"]
    print(
        f"embed ratios: ours fp32 / plain fp32 {rates['float32'] / plain:.2f}, "
        f"bf16 / fp32 {rates['bfloat16'] / rates['float32']:.2f}",
        flush=True,
    )


def store(folder: Path, n_docs: int, rng: np.random.Generator) -> StoredEmbeddings:
    folder.mkdir()
    for s, start in enumerate(range(0, n_docs, SHARD)):
        rows = min(SHARD, n_docs - start)
        vectors = rng.normal(size=(rows, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"d{start + i}" for i in range(rows)]
        pq.write_table(shard_table("random", ids, vectors, [False] * rows), folder / shard_name(s))
    return StoredEmbeddings(str(folder))


def search(sizes: list[int], queries: int, depth: int, hnsw_max: int) -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(queries, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for n_docs in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            stored = store(Path(tmp) / "e", n_docs, rng)
            with Peak() as exact:
                exact_search(q, stored, depth)
            line = (
                f"search {n_docs:>9} docs x {queries} queries | exact {exact.seconds:7.1f} s, "
                f"peak +{exact.mib:6.0f} MiB"
            )
            if n_docs <= hnsw_max:
                with Peak() as build:
                    index = HnswIndex(stored, depth)
                with Peak() as answer:
                    index.search(q, depth)
                per_query_gain = (exact.seconds - answer.seconds) / queries
                crossover = build.seconds / per_query_gain if per_query_gain > 0 else float("inf")
                line += (
                    f" | hnsw build {build.seconds:7.1f} s (peak +{build.mib:6.0f} MiB), "
                    f"search {answer.seconds:6.2f} s | hnsw pays past {crossover:,.0f} queries"
                )
            print(line, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embed-docs", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--docs", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--hnsw-max", type=int, default=300_000, help="largest N to build HNSW for")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(f"machine: {detect().describe()}, {torch.get_num_threads()} torch threads", flush=True)
    embedding(args.embed_docs, args.batch_size)
    search(args.docs, args.queries, args.depth, args.hnsw_max)


if __name__ == "__main__":
    main()
