"""The one rule every step's output folder follows.

A step stamps its folder with `<step>_config.json`: a hash of what the outputs depend on, and
the config beside it for people reading the folder later. Re-running with the same
configuration resumes into the folder; a folder written by something else, or with another
configuration, is refused instead of being mixed with new outputs (unless `overwrite`). A
step's completion marker is written last, so a folder never looks complete before it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from filelock import FileLock, Timeout

from qpeft import storage
from qpeft.config import ConfigError


def digest(what: dict) -> str:
    """The stamp of a configuration: what a step's outputs depend on, as a JSON mapping."""
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def without(config: dict, ignored: tuple[str, ...]) -> dict:
    """`config` less the dotted keys in `ignored` (how to run, not what is produced)."""
    kept = json.loads(json.dumps(config))
    for dotted in ignored:
        *parents, last = dotted.split(".")
        node = kept
        for part in parents:
            node = node.get(part) or {}
        node.pop(last, None)
    return kept


def differences(before: dict, after: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, value before, value after) for every key whose value differs between two
    configurations, nested mappings compared key by key: what a refusal names."""
    found = []
    for key in sorted(set(before) | set(after), key=str):
        old, new, dotted = before.get(key), after.get(key), f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            found += differences(old, new, f"{dotted}.")
        elif old != new:
            found.append((dotted, old, new))
    return found


def first_difference(before: dict, after: dict) -> str:
    """`key is old there, new here` for the first differing key, and how many more differ."""
    found = differences(before, after)
    if not found:
        return "the configuration"
    key, old, new = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return f"{key} is {old!r} there, {new!r} here{more}"


class OutputFolder:
    """A folder (local or a cloud URI) that one step writes for one configuration."""

    step: ClassVar[str]
    marker: ClassVar[str]  # written last: the folder is complete
    overwrite_key: ClassVar[str]  # the config key that lets a run replace the folder

    def __init__(self, root: str | Path):
        self.root = str(root)

    def path(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    @property
    def stamp(self) -> str:
        return self.path(f"{self.step}_config.json")

    def is_complete(self) -> bool:
        return storage.exists(self.path(self.marker))

    def mark_complete(self) -> None:
        storage.write_text(self.path(self.marker), "")

    def claim(
        self,
        what: str,
        config: dict,
        overwrite: bool = False,
        error: type[Exception] = ConfigError,
        replace: bool = False,
    ) -> None:
        """Make this the folder of `self.step` for the configuration hashed in `what`.
        `replace`: outputs of another configuration are cheap to remake (a report) and are
        replaced instead of refused; an unstamped folder holding this step's marker counts
        as its own (written before folders were stamped)."""
        step, root = self.step, self.root
        earlier = json.loads(storage.read_text(self.stamp)) if storage.exists(self.stamp) else None
        if overwrite:
            storage.remove(root)
        elif earlier is None and storage.is_nonempty_dir(root):
            if not (replace and self.is_complete()):
                raise error(
                    f"{step}: {root} exists and was not written by qpeft {step}; choose "
                    f"another folder or set {self.overwrite_key}=true"
                )
        elif earlier is not None and earlier["hash"] != what:
            # A folder holding its stamp alone (a run that stopped before writing anything)
            # is free for another configuration.
            if not replace and storage.list_dir(root) != [Path(self.stamp).name]:
                change = first_difference(earlier.get("config") or {}, config)
                raise error(
                    f"{step}: {root} holds outputs made with another configuration "
                    f"({change}); set {self.overwrite_key}=true to replace them, or choose "
                    f"another folder"
                )
            storage.remove(root)
        storage.write_text(self.stamp, json.dumps({"hash": what, "config": config}, indent=2))

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the folder for one run of the step: a second run started into it (same
        configuration or not) is refused at once instead of writing beside the first.

        The lock is a file beside the folder (an overwrite may remove the folder itself).
        Object stores have no locks: for a cloud URI, runs must not share a folder."""
        if storage.is_uri(self.root):
            yield
            return
        path = Path(self.root).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path.parent / f".{path.name}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ConfigError(
                f"{self.step}: another run is writing {path} (it holds {lock.lock_file}); "
                "wait for it to finish or choose another output folder"
            ) from None
        try:
            yield
        finally:
            lock.release()
