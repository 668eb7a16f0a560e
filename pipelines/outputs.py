"""Output folders that belong to one step and one configuration.

A step stamps its folder with a hash of what its outputs depend on. Re-running with the same
configuration resumes into the folder; a folder written by something else, or with another
configuration, is refused instead of being mixed with new outputs (unless `overwrite`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from qpeft.config import ConfigError


def digest(what: dict) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def claim_output_dir(
    root: Path,
    step: str,
    what: str,
    config: dict,
    overwrite: bool,
    error: type[Exception] = ConfigError,
) -> None:
    """Make `root` the output folder of `step` for the configuration hashed in `what`;
    `config` is recorded beside the hash for people reading the folder later."""
    stamp = root / f"{step}_config.json"
    if root.exists() and overwrite:
        shutil.rmtree(root)
    elif root.exists() and not stamp.exists() and any(root.iterdir()):
        raise error(
            f"{step}: {root} exists and was not written by qpeft {step}; choose another "
            f"folder or set {step}.overwrite=true"
        )
    elif stamp.exists() and json.loads(stamp.read_text())["hash"] != what:
        raise error(
            f"{step}: {root} holds outputs made with another configuration; set "
            f"{step}.overwrite=true to replace them, or choose another folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"hash": what, "config": config}, indent=2))
