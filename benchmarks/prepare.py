"""Corpus ingestion: Ray Data prepare step vs a single-process loop, and driver memory.

Builds a synthetic corpus by replicating Cranfield's documents (new ids) into JSONL files,
then, for 1x and 10x that size, times the corpus step of `qpeft prepare` (read, validate,
write parquet shards through Ray Data) and a plain loop (same reader, pyarrow writer) on the
same files, and samples the driver's peak RSS during each. The Ray driver never holds the
corpus, so its memory should stay flat from 1x to 10x; the plain loop's is bounded by one
write batch too, but it runs on one core.

    python benchmarks/prepare.py --base-docs 20000 --files 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import torch

from pipelines.prepare import read_source
from pipelines.ray_setup import RaySection, init_ray
from qpeft.data import irds, schemas
from qpeft.data.sources import SourceConfig, parts
from qpeft.lm.hardware import detect


class DriverPeak:
    """Peak RSS of this process (the driver) while the block runs, sampled every 10 ms."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def synthetic_corpus(directory: Path, n_docs: int, n_files: int) -> str:
    """JSONL files holding `n_docs` Cranfield documents, replicated with fresh ids."""
    docs = list(irds.iter_docs(irds.load("cranfield")))
    directory.mkdir(parents=True)
    handles = [(directory / f"part-{i:03d}.jsonl").open("w") for i in range(n_files)]
    for i in range(n_docs):
        doc_id, text = docs[i % len(docs)]
        handles[i % n_files].write(json.dumps({"id": f"{doc_id}-{i}", "text": text}) + "\n")
    for handle in handles:
        handle.close()
    return str(directory / "part-*.jsonl")


def plain_loop(pattern: str, out: Path, block_rows: int) -> None:
    out.mkdir()
    for n, part in enumerate(parts(SourceConfig(corpus=pattern, queries=pattern), "corpus")):
        with pq.ParquetWriter(out / f"{n}.parquet", schemas.CORPUS) as writer:
            rows = []
            for row in part():
                rows.append(row)
                if len(rows) == block_rows:
                    writer.write_table(schemas.table(rows, schemas.CORPUS))
                    rows = []
            if rows:
                writer.write_table(schemas.table(rows, schemas.CORPUS))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; tests parse the lines the docs show with it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-docs", type=int, default=20000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--block-rows", type=int, default=2000)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(f"machine: {detect().describe()}, {torch.get_num_threads()} torch threads", flush=True)

    init_ray(RaySection(num_cpus=2))
    work = Path(tempfile.mkdtemp(prefix="qpeft-bench-prepare-"))
    rows = []
    try:
        # Start Ray's worker processes before timing: a fixed cost of a few seconds per job.
        warm = SourceConfig(corpus=synthetic_corpus(work / "warm", 100, args.files), queries="x")
        read_source(warm, "corpus", schemas.CORPUS, args.block_rows).write_parquet(
            str(work / "warm-out")
        )
        for scale in (1, 10):
            n_docs = args.base_docs * scale
            pattern = synthetic_corpus(work / f"src{scale}", n_docs, args.files)
            source = SourceConfig(corpus=pattern, queries=pattern)
            results = {}
            for name in ("ray", "plain"):
                out = work / f"{name}{scale}"
                with DriverPeak() as mem:
                    start = time.perf_counter()
                    if name == "ray":
                        read_source(
                            source, "corpus", schemas.CORPUS, args.block_rows
                        ).write_parquet(str(out))
                    else:
                        plain_loop(pattern, out, args.block_rows)
                    seconds = time.perf_counter() - start
                written = sum(pq.ParquetFile(f).metadata.num_rows for f in out.glob("*.parquet"))
                assert written == n_docs, (name, written, n_docs)
                results[name] = (n_docs / seconds, mem.peak / 2**20)
            rows.append((scale, n_docs, results))
            ray_rate, plain_rate = results["ray"][0], results["plain"][0]
            print(
                f"{scale:>3}x {n_docs:>8} docs | ray data {ray_rate:9.0f} docs/s, driver peak "
                f"{results['ray'][1]:6.0f} MiB | plain loop {plain_rate:9.0f} docs/s, peak "
                f"{results['plain'][1]:6.0f} MiB | ratio {ray_rate / plain_rate:.2f}x"
            )
        (_, _, r1), (_, _, r10) = rows
        print(
            f"driver peak RSS 10x / 1x: ray data {r10['ray'][1] / r1['ray'][1]:.2f}, "
            f"plain loop {r10['plain'][1] / r1['plain'][1]:.2f}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
