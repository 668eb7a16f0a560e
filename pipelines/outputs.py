"""Output folders that belong to one step and one configuration.

A step stamps its folder with a hash of what its outputs depend on. Re-running with the same
configuration resumes into the folder; a folder written by something else, or with another
configuration, is refused instead of being mixed with new outputs (unless `overwrite`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from qpeft import storage
from qpeft.config import ConfigError


def digest(what: dict) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def claim_output_dir(
    root: str | Path,
    step: str,
    what: str,
    config: dict,
    overwrite: bool,
    error: type[Exception] = ConfigError,
) -> None:
    """Make `root` the output folder of `step` for the configuration hashed in `what`;
    `config` is recorded beside the hash for people reading the folder later. `root` may be
    a local folder or a cloud URI."""
    stamp = storage.join(root, f"{step}_config.json")
    if overwrite:
        storage.remove(root)
    elif not storage.exists(stamp) and storage.is_nonempty_dir(root):
        raise error(
            f"{step}: {root} exists and was not written by qpeft {step}; choose another "
            f"folder or set {step}.overwrite=true"
        )
    elif storage.exists(stamp) and json.loads(storage.read_text(stamp))["hash"] != what:
        raise error(
            f"{step}: {root} holds outputs made with another configuration; set "
            f"{step}.overwrite=true to replace them, or choose another folder"
        )
    storage.write_text(stamp, json.dumps({"hash": what, "config": config}, indent=2))


@contextlib.contextmanager
def exclusive(root: str | Path, step: str) -> Iterator[None]:
    """Hold `root` for one run of `step`: a second run started into the same folder (same
    configuration or not) is refused at once instead of writing beside the first.

    The lock is a file beside the folder (an overwrite may remove the folder itself). Object
    stores have no locks: for a cloud URI, runs must not share an output folder."""
    if storage.is_uri(root):
        yield
        return
    path = Path(root).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.parent / f".{path.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(
            f"{step}: another run is writing {path} (it holds {lock.lock_file}); wait for it "
            "to finish or choose another output folder"
        ) from None
    try:
        yield
    finally:
        lock.release()
