"""ir_datasets access that works offline.

ir_datasets downloads into `IR_DATASETS_HOME` on first use, which fails without network.
Seeding copies the files it would have cached (for example `../shared/datasets/ir_datasets`)
into a writable home first; shared folders are read-only, and ir_datasets writes indexes
beside its files, so a copy (not a symlink) is needed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from qpeft.data.readers import DataError

SEED_ENV = "QPEFT_IRDS_SEED"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SEED = REPO_ROOT.parent / "shared" / "datasets" / "ir_datasets"


def default_home() -> Path:
    root = os.environ.get("QPEFT_CACHE") or Path.home() / ".cache" / "qpeft"
    return Path(root) / "ir_datasets"


def seed_home(seed: str | Path | None = None, home: str | Path | None = None) -> Path | None:
    """Copy missing files from `seed` (or $QPEFT_IRDS_SEED, or ../shared) into the home
    ir_datasets will use, and point `IR_DATASETS_HOME` at it. Returns the seed used."""
    if seed is None:
        seed = os.environ.get(SEED_ENV) or (DEFAULT_SEED if DEFAULT_SEED.is_dir() else None)
    target = Path(home or os.environ.get("IR_DATASETS_HOME") or default_home())
    os.environ["IR_DATASETS_HOME"] = str(target)
    if seed is None:
        return None
    seed = Path(seed)
    if not seed.is_dir():
        raise FileNotFoundError(f"ir_datasets seed directory {seed} does not exist")
    for source in seed.rglob("*"):
        if source.is_file():
            dest = target / source.relative_to(seed)
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(dest.name + ".partial")
                shutil.copyfile(source, tmp)
                os.replace(tmp, dest)
    return seed


def load(dataset_id: str, seed: str | Path | None = None):
    """`ir_datasets.load` after seeding the offline home."""
    seed_home(seed)
    import ir_datasets  # imported late: it reads IR_DATASETS_HOME when used

    return ir_datasets.load(dataset_id)


def doc_text(doc) -> str:
    """One text per document: title and body where the dataset has both."""
    title = getattr(doc, "title", "") or ""
    text = getattr(doc, "text", None)
    if text is None:
        text = getattr(doc, "default_text", lambda: "")()
    return f"{title.strip()}\n{text.strip()}".strip() if title.strip() else text.strip()


def offline(records: Iterator) -> Iterator:
    """`records` of a dataset, with ir_datasets' failed download (its files neither in the
    home nor seeded from anywhere) turned into one line saying where they are expected."""
    try:
        yield from records
    except RuntimeError as err:
        if not err.args or err.args[0] != "All download sources failed":
            raise
        raise DataError(
            f"ir_datasets found none of this dataset's files under "
            f"{os.environ.get('IR_DATASETS_HOME')} and could not download them: the offline "
            f"copy is expected in {DEFAULT_SEED} (../shared/datasets/ir_datasets beside the "
            f"checkout), or in the folder ${SEED_ENV} names "
            f"(now {os.environ.get(SEED_ENV) or 'unset'})"
        ) from None


def iter_docs(dataset) -> Iterator[tuple[str, str]]:
    for doc in offline(dataset.docs_iter()):
        yield doc.doc_id, doc_text(doc)


def iter_queries(dataset) -> Iterator[tuple[str, str]]:
    for query in offline(dataset.queries_iter()):
        text = getattr(query, "text", None) or query.default_text()
        yield query.query_id, " ".join(text.split())


def iter_qrels(dataset) -> Iterator[tuple[str, str, int]]:
    for qrel in offline(dataset.qrels_iter()):
        yield qrel.query_id, qrel.doc_id, int(qrel.relevance)
