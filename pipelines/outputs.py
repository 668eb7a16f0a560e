"""Output folders that belong to one step and one configuration.

A step stamps its folder with a hash of what its outputs depend on. Re-running with the same
configuration resumes into the folder; a folder written by something else, or with another
configuration, is refused instead of being mixed with new outputs (unless `overwrite`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
