"""Storage paths: a local folder or a cloud URI (s3://, gs://, abfss://, hdfs://...).

Multi-node runs need outputs every node can reach. pyarrow.fs is the filesystem layer that
Ray Train, Tune and Data already use for their own `storage_path`, so one library resolves
both kinds of path, with the cloud's usual credentials from the environment (AWS_* including
AWS_ENDPOINT_URL for S3-compatible stores, GOOGLE_APPLICATION_CREDENTIALS, ...).

Object stores have no atomic rename of a folder: a folder is complete when its marker file,
written last, exists (`_SUCCESS`, `metrics.json`, `report.json`), never because it exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from qpeft.config import ConfigError

CACHE = Path(os.environ.get("QPEFT_CACHE", Path.home() / ".cache" / "qpeft"))


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def absolute(path: str | Path) -> str:
    """URIs as given; local paths made absolute (Ray workers run in other folders)."""
    if is_uri(path):
        if "?" in str(path):
            raise ConfigError(
                f"{path}: put endpoints and credentials in the environment (e.g. "
                "AWS_ENDPOINT_URL), not in the URI: the URI is joined with sub-folder names"
            )
        return str(path).rstrip("/")
    return str(Path(path).resolve())


def join(base: str | Path, *parts: str) -> str:
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base, *parts))


def resolve(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `path` and the path inside it."""
    if is_uri(path):
        try:
            return pafs.FileSystem.from_uri(absolute(path))
        except (pa.ArrowInvalid, OSError) as err:  # unknown scheme, bucket-less URI...
            raise ConfigError(f"{path}: {err}") from None
    return pafs.LocalFileSystem(), absolute(path)


def exists(path: str | Path) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def is_nonempty_dir(path: str | Path) -> bool:
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return False
    return bool(fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True)))


def read_text(path: str | Path) -> str:
    fs, inner = resolve(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read().decode()


def write_text(path: str | Path, text: str) -> None:
    """Readers never see half a file: a local file is renamed into place, and an object
    store makes an object visible only once its upload is complete."""
    if not is_uri(path):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        tmp.replace(target)
        return
    fs, inner = resolve(path)
    with fs.open_output_stream(inner) as stream:
        stream.write(text.encode())


def remove(path: str | Path) -> None:
    """Delete a file or a folder; a missing one is fine."""
    fs, inner = resolve(path)
    kind = fs.get_file_info(inner).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(inner)
    elif kind != pafs.FileType.NotFound:
        fs.delete_file(inner)


def copy(source: str | Path, dest: str | Path, markers: tuple[str, ...] = ()) -> None:
    """Replace `dest` with a copy of the file or folder `source` (any two filesystems); a
    folder's top-level `markers` go last, so `dest` never looks complete before it is."""
    remove(dest)
    source_fs, source_inner = resolve(source)
    dest_fs, dest_inner = resolve(dest)
    if source_fs.get_file_info(source_inner).type != pafs.FileType.Directory:
        pafs.copy_files(source_inner, dest_inner, source_fs, dest_fs)
        return
    dest_fs.create_dir(dest_inner)  # local destination folders must exist first
    entries = source_fs.get_file_info(pafs.FileSelector(source_inner))
    for entry in sorted(entries, key=lambda e: (e.base_name in markers, e.base_name)):
        target = f"{dest_inner}/{entry.base_name}"
        if entry.type == pafs.FileType.Directory:
            dest_fs.create_dir(target)
        pafs.copy_files(entry.path, target, source_fs, dest_fs)


def read_parquet(path: str | Path, columns: list[str] | None = None, filter=None) -> pa.Table:
    """A folder of parquet files as one table (a cloud URI too), with pyarrow's pushdown of
    `columns` and `filter`."""
    return pads.dataset(str(path), format="parquet").to_table(columns=columns, filter=filter)


def list_dir(path: str | Path) -> list[str]:
    """Names of the entries of the folder `path` (none when it is missing)."""
    fs, inner = resolve(path)
    return sorted(
        i.base_name for i in fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    )


def local_copy(path: str | Path) -> Path:
    """A local folder or file to read `path` from: itself when local, else a copy
    downloaded once per node and version into the cache (to a temporary name, renamed)."""
    if not is_uri(path):
        return Path(path)
    fs, inner = resolve(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path} does not exist")
    files = [info]
    if info.type == pafs.FileType.Directory:
        files = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    version = sorted((f.path, f.size, f.mtime_ns) for f in files)
    key = hashlib.sha256(repr((absolute(path), version)).encode()).hexdigest()[:16]
    target = CACHE / "remote" / key
    name = Path(inner).name
    if (target / name).exists():
        return target / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        copy(path, tmp / name)
        with contextlib.suppress(OSError):  # another process finished the same copy first
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target / name


def snapshot(folder: Path) -> set[tuple[str, int, int]]:
    """What a folder holds, to tell whether a step changed it."""
    return {
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@contextlib.contextmanager
def staged(dest: str | Path, markers: tuple[str, ...]) -> Iterator[Path]:
    """A local folder to write a driver-side step's outputs in. For a cloud `dest` it is a
    temporary copy of what `dest` holds (so a step resumes from any node), uploaded on the
    way out, finished or not, when something changed, with the completion `markers` last."""
    if not is_uri(dest):
        yield Path(dest)
        return
    with tempfile.TemporaryDirectory(prefix="qpeft-stage-") as tmp:
        stage = Path(tmp) / "out"
        if exists(dest):
            copy(dest, stage)
        stage.mkdir(exist_ok=True)
        before = snapshot(stage)
        try:
            yield stage
        finally:
            if snapshot(stage) != before:
                copy(stage, dest, markers)
