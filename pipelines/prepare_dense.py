"""The dense side of `qpeft prepare`: embed the corpus with Ray Data, choose the hybrid weight.

Embedding runs `map_batches` on an actor pool (one model per actor, CPU or GPU) and resumes
by shard: embedding shard i is corpus shard i, written (under a temporary name, then
renamed) once every one of its documents has a vector, so a killed run re-embeds only the
shards without a file. At the end every document must appear exactly once; then
`embeddings.json` and `_SUCCESS` say the folder is whole.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy

from qpeft import storage
from qpeft.artifacts import PreparedData
from qpeft.data.dense_index import (
    FOLDER,
    check_hnsw_memory,
    check_stored,
    shard_name,
    shard_table,
    stored_shards,
)
from qpeft.data.first_stage import FirstStage, FirstStageConfig
from qpeft.data.hybrid import choose_weight
from qpeft.data.readers import DataError
from qpeft.data.sources import full_text
from qpeft.embedding import DenseConfig, Encoder

HYBRID_CHOICE = "first_stage.json"
READ_ROWS = 2000
DEFAULT_HYBRID_WEIGHT = 0.5


class EmbedDocuments:
    """Ray Data UDF: corpus rows -> (shard path, doc_id, embedding); empty texts get null."""

    def __init__(self, dense: DenseConfig, title_separator: str | None):
        import torch

        # Ray gives an actor one thread per requested CPU; embedding is the only work
        # running while the actors live, so they share the node's cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dense.actors))
        self.encoder = Encoder(dense)
        self.title_separator = title_separator

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [
            full_text(t, x, self.title_separator)
            for t, x in zip(
                batch.column("title").to_pylist(), batch.column("text").to_pylist(), strict=True
            )
        ]
        missing = [not t.strip() for t in texts]
        vectors = np.zeros((len(texts), self.encoder.dim), np.float32)
        filled = [i for i, empty in enumerate(missing) if not empty]
        if filled:
            vectors[filled] = self.encoder.encode([texts[i] for i in filled], queries=False)
        shard = shard_table(
            self.encoder.config.model, batch.column("doc_id").to_pylist(), vectors, missing
        )
        return shard.append_column("path", batch.column("path"))


def corpus_files(out: PreparedData) -> list[str]:
    folder = out.path(out.CORPUS)
    return [storage.join(folder, n) for n in storage.list_dir(folder) if n.endswith(".parquet")]


def row_count(path: str) -> int:
    fs, inner = storage.resolve(path)
    return pq.read_metadata(inner, filesystem=fs).num_rows


def write_shard(folder: str, index: int, table: pa.Table) -> None:
    """Write under a temporary name, then move into place: a shard file is always whole
    (on object stores the move is a copy of a finished object)."""
    target = storage.join(folder, shard_name(index))
    fs, inner = storage.resolve(target)
    pq.write_table(table, f"{inner}.partial", filesystem=fs)
    fs.move(f"{inner}.partial", inner)


def dense_resources(dense: DenseConfig) -> dict:
    """What an actor or task that loads the embedding model asks Ray for."""
    return {"num_cpus": 1, "num_gpus": 1 if dense.device.startswith("cuda") else 0}


def check_fits(first_stage: FirstStageConfig, documents: int, dim: int) -> None:
    """HNSW holds every vector: refuse a corpus that cannot fit before embedding it."""
    if first_stage.dense.index == "hnsw":
        check_hnsw_memory(documents, dim, psutil.virtual_memory().available)


def embed_corpus(first_stage: FirstStageConfig, out: PreparedData, log) -> dict:
    """Embed every document of the prepared corpus once (resuming by shard); the summary."""
    folder = out.path(FOLDER)
    summary_path = storage.join(folder, "embeddings.json")
    if storage.exists(storage.join(folder, out.marker)):
        return json.loads(storage.read_text(summary_path))
    dense = first_stage.dense
    # Unpacks a packaged model once, here, before any actor; on the CPU: the driver may
    # have no GPU, and the actors need theirs.
    dim = Encoder(replace(dense, device="cpu")).dim
    files = {name_of(f): f for f in corpus_files(out)}  # names are unique in one folder
    expected = {name: row_count(f) for name, f in files.items()}
    shard_of = {name: i for i, name in enumerate(files)}
    check_fits(first_stage, sum(expected.values()), dim)
    check_stored(folder, dense.model, dim)
    fs, inner = storage.resolve(folder)
    fs.create_dir(inner, recursive=True)
    todo = [n for n in files if not storage.exists(storage.join(folder, shard_name(shard_of[n])))]
    start = time.perf_counter()
    embedded = 0
    if todo:
        log(
            f"embedding {sum(expected[n] for n in todo)} documents ({len(todo)} of "
            f"{len(files)} shards) with {dense.model}"
        )
        for name, rows in embedded_shards(first_stage, [files[n] for n in todo], expected):
            write_shard(folder, shard_of[name], rows)
            embedded += rows.num_rows
    seconds = time.perf_counter() - start
    shards = {shard_name(shard_of[name]): files[name] for name in files}
    return finish(folder, dense.model, dim, shards, embedded, seconds)


def name_of(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def embedded_shards(first_stage: FirstStageConfig, paths: list[str], expected: dict[str, int]):
    """(corpus file name, its embedding rows) as each corpus file's last row is embedded."""
    dense, total = first_stage.dense, sum(expected[name_of(p)] for p in paths)
    resources = dense_resources(dense)
    batches = (
        ray.data.read_parquet(
            paths,
            include_paths=True,
            # Corpus shards can be a few documents each (folders prepared before the read
            # asked for its block count hold Ray Data's default 200): one read task per
            # ~2,000 documents instead of one per file.
            override_num_blocks=max(1, min(len(paths), total // READ_ROWS)),
        )
        .select_columns(["doc_id", "title", "text", "path"])
        .map_batches(
            EmbedDocuments,
            fn_constructor_kwargs={"dense": dense, "title_separator": first_stage.title_separator},
            compute=ActorPoolStrategy(size=dense.actors),
            batch_size=dense.batch_size * 4,
            batch_format="pyarrow",
            **resources,
        )
        .iter_batches(batch_format="pyarrow", batch_size=None)
    )
    buffers: dict[str, list[pa.Table]] = {}
    for batch in batches:
        for path in set(batch.column("path").to_pylist()):
            name = name_of(path)
            rows = batch.filter(pc.equal(batch.column("path"), path))
            buffers.setdefault(name, []).append(rows.drop_columns(["path"]))
            done = sum(t.num_rows for t in buffers[name])
            if done > expected[name]:
                raise DataError(f"{name}: {done} embeddings for {expected[name]} documents")
            if done == expected[name]:
                yield name, pa.concat_tables(buffers.pop(name))
    if buffers:
        raise DataError(f"{len(buffers)} corpus shards were embedded only in part; re-run")


def finish(
    folder: str, model: str, dim: int, corpus: dict[str, str], embedded: int, seconds: float
) -> dict:
    """Check every shard holds its corpus shard's rows, each once (a corpus may repeat a
    document id: prepare counts those, and each row keeps its embedding), one shard at a
    time; then mark the folder whole. `corpus`: embedding shard name -> corpus file."""
    found = {name_of(p): p for p in stored_shards(folder)}
    if set(found) != set(corpus):
        raise DataError(
            f"{folder}: {len(found)} embedding shards for {len(corpus)} corpus shards; "
            "delete it and re-run"
        )
    empty = documents = 0
    for name, path in found.items():
        table = storage.read_parquet(path, columns=["doc_id", "embedding"])
        wanted = storage.read_parquet(corpus[name], columns=["doc_id"]).column("doc_id")
        documents += len(wanted)
        if sorted(table.column("doc_id").to_pylist()) != sorted(wanted.to_pylist()):
            distinct = pc.count_distinct(table.column("doc_id")).as_py()
            raise DataError(
                f"{path}: {table.num_rows} embeddings ({distinct} distinct ids) for the "
                f"{len(wanted)} documents of {corpus[name]}; delete it and re-run"
            )
        empty += table.column("embedding").null_count
    summary = {
        "model": model,
        "dim": dim,
        "documents": documents,
        "empty_documents": empty,
        "shards": len(found),
        "embedded_this_run": embedded,
        "seconds_this_run": round(seconds, 1),
    }
    storage.write_text(
        storage.join(folder, "embeddings.json"), json.dumps(summary, indent=2) + "\n"
    )
    storage.write_text(storage.join(folder, "_SUCCESS"), "")
    return summary


@ray.remote
def choose_hybrid_weight(root: str, first_stage: FirstStageConfig) -> dict:
    """The dense weight of the hybrid list, by NDCG@10 over the judged dev queries (none:
    an even 0.5, recorded as such)."""
    prepared = PreparedData(root)
    rows = [r for r in prepared.table(prepared.QUERIES).to_pylist() if r["split"] == "dev"]
    qrels = prepared.qrels([r["query_id"] for r in rows])
    rows = [r for r in rows if r["query_id"] in qrels]
    if not rows:  # no judged dev query: an even fusion, said so in the record
        return {"hybrid_weight": DEFAULT_HYBRID_WEIGHT, "chosen_on": "default: no judged dev query"}
    stage = FirstStage(root, first_stage, has_run=False)
    ids = [r["query_id"] for r in rows]
    bm25, dense = stage.lists([r["text"] for r in rows])
    weight, curve = choose_weight(
        dict(zip(ids, bm25, strict=True)),
        dict(zip(ids, dense, strict=True)),
        qrels,
        first_stage.depth,
    )
    return {
        "hybrid_weight": weight,
        "chosen_on": "dev",
        "queries": len(ids),
        "ndcg@10_by_weight": curve,
    }
