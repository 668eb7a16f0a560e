"""The skeleton every step follows: resolve its inputs, claim its output folder, run, and
publish with the folder's completion marker last.

A step module keeps only its own config section and its work: `claimed` holds and stamps
the output folder (`qpeft.artifacts`: one stamping rule for every step), and
`sections_for` builds a step's config from the sections another config shares with it by
name (the demo chains the real steps this way, without repacking their sections by hand).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any, TypeVar

from qpeft import storage
from qpeft.artifacts import OutputFolder, digest
from qpeft.config import ConfigError

Folder = TypeVar("Folder", bound=OutputFolder)


@contextlib.contextmanager
def claimed(
    folder: Folder,
    settings: dict,
    overwrite: bool,
    error: type[Exception] = ConfigError,
    replace: bool = False,
    staged: bool = False,
) -> Iterator[Folder]:
    """Hold `folder` for this run and stamp it with `settings` (what its outputs depend
    on), refusing a folder of another step or configuration. With `staged`, the step
    writes in a local copy that is uploaded on the way out (cloud outputs written by the
    driver), its marker last."""
    with folder.exclusive():
        if not staged:
            folder.claim(digest(settings), settings, overwrite, error, replace)
            yield folder
            return
        with storage.staged(folder.root, markers=(folder.marker,)) as local:
            work = type(folder)(local)
            work.claim(digest(settings), settings, overwrite, error, replace)
            yield work


T = TypeVar("T")


def sections_for(config_class: type[T], source: Any, **given: Any) -> T:
    """A `config_class` from the sections of `source` with the same names, and `given`."""
    names = {f.name for f in dataclasses.fields(config_class)}
    shared = {n: getattr(source, n) for n in names - set(given) if hasattr(source, n)}
    return config_class(**shared, **given)
