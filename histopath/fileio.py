"""File work on local paths and URIs alike (`gs://`, `s3://`, `hdfs://`, `ram://`), through
`tf.io.gfile`, written so that nothing is ever seen half-written.

- A local path is made absolute; a URI is never touched (no `pathlib.resolve()` on
  `gs://bucket`, which would turn it into `<cwd>/gs:/bucket`).
- Files are written to a temporary sibling and renamed into place. On a POSIX file system
  the rename is atomic; an object store has no rename, so there a file is written in one
  piece (an object appears whole or not at all).
- A folder is published by writing it under a temporary sibling name and renaming it
  (POSIX), or by copying every file and the one a reader waits for (its marker, e.g.
  `saved_model.pb`) last (object stores).

URIs go through `tf.io.gfile` (TensorFlow is imported on first use); local paths through
`os`/`shutil`, with the same behaviour, so that local tools need no TensorFlow.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import uuid
from typing import Any, Sequence

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _gfile():
    import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
    import tensorflow as tf

    return tf.io.gfile


def is_uri(path: str | os.PathLike) -> bool:
    """Whether `path` names a file system by scheme (`gs://...`, `ram://...`); `file://`
    counts as local."""
    text = os.fspath(path)
    return bool(_SCHEME.match(text)) and not text.startswith("file://")


def has_atomic_rename(path: str | os.PathLike) -> bool:
    """Whether folders under `path` can be renamed atomically (local POSIX paths)."""
    return not is_uri(path)


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute (`~` expanded); a URI returned unchanged."""
    text = os.fspath(path)
    if not text:
        return text
    if text.startswith("file://"):
        text = text[len("file://"):]
    return text if is_uri(text) else os.path.abspath(os.path.expanduser(text))


def join(base: str | os.PathLike, *parts: str) -> str:
    """Joins path components with `/` (URIs) or the local separator."""
    base = os.fspath(base)
    return posixpath.join(base, *parts) if is_uri(base) else os.path.join(base, *parts)


def parent(path: str | os.PathLike) -> str:
    """The folder holding `path`."""
    text = os.fspath(path).rstrip("/")
    return posixpath.dirname(text) if is_uri(text) else os.path.dirname(text)


def basename(path: str | os.PathLike) -> str:
    """The last component of `path`."""
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def exists(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return _gfile().exists(path) if is_uri(path) else os.path.exists(absolute(path))


def isdir(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return _gfile().isdir(path) if is_uri(path) else os.path.isdir(absolute(path))


def listdir(path: str | os.PathLike) -> list[str]:
    """Names in a folder (no trailing `/`), sorted; [] when it does not exist."""
    path = os.fspath(path)
    if not isdir(path):
        return []
    names = _gfile().listdir(path) if is_uri(path) else os.listdir(absolute(path))
    return sorted(name.rstrip("/") for name in names)


def makedirs(path: str | os.PathLike) -> None:
    path = os.fspath(path)
    _gfile().makedirs(path) if is_uri(path) else os.makedirs(absolute(path), exist_ok=True)


def remove_tree(path: str | os.PathLike) -> None:
    """Deletes a folder (or a file) and everything in it; nothing when it does not exist."""
    path = os.fspath(path)
    if not exists(path):
        return
    if is_uri(path):
        gfile = _gfile()
        gfile.rmtree(path) if gfile.isdir(path) else gfile.remove(path)
    elif os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file. A local file is read without importing TensorFlow (Beam workers
    read every image this way).

    Raises:
      OSError: a local file cannot be read; tf.errors.OpError for a URI.
    """
    path = os.fspath(path)
    if not is_uri(path):
        with open(absolute(path), "rb") as handle:
            return handle.read()
    with _gfile().GFile(path, "rb") as handle:
        return handle.read()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(read_text(path))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes a whole file so that readers see the old content or the new, never a part."""
    path = os.fspath(path)
    if is_uri(path):
        # Written beside, then renamed over the old file: a store's rename replaces the
        # object whole (GCS, S3: copy then delete), and no file system appends to the old.
        gfile = _gfile()
        gfile.makedirs(parent(path))
        temporary = join(parent(path), f".{basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
        with gfile.GFile(temporary, "wb") as handle:
            handle.write(data)
        gfile.rename(temporary, path, overwrite=True)
        return
    path = absolute(path)
    os.makedirs(parent(path), exist_ok=True)
    temporary = join(parent(path), f".{basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any, **dumps_options: Any) -> None:
    """Writes `value` as indented JSON with a final newline (see `write_bytes`)."""
    options = {"indent": 2, "sort_keys": True, **dumps_options}
    write_text(path, json.dumps(value, **options) + "\n")


def walk_files(folder: str | os.PathLike) -> list[str]:
    """Every file under `folder`, as paths relative to it (with `/`), sorted."""
    folder = os.fspath(folder).rstrip("/")
    walk = _gfile().walk if is_uri(folder) else os.walk
    found = []
    for root, _, files in walk(folder):
        relative = root[len(folder):].strip("/").replace(os.sep, "/")
        found += [f"{relative}/{name}" if relative else name for name in files]
    return sorted(found)


def copy_file(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Copies one file (overwriting), between any two file systems."""
    source, destination = os.fspath(source), os.fspath(destination)
    makedirs(parent(destination))
    if is_uri(source) or is_uri(destination):
        _gfile().copy(source, destination, overwrite=True)
    else:
        shutil.copyfile(source, destination)


def copy_tree(source: str | os.PathLike, destination: str | os.PathLike,
              last: Sequence[str] = ()) -> None:
    """Copies every file of `source` into `destination`, the files named in `last`
    (relative paths) after all others, in that order."""
    source, destination = os.fspath(source), os.fspath(destination)
    files = walk_files(source)
    ordered = [f for f in files if f not in last] + [f for f in last if f in files]
    for relative in ordered:
        copy_file(join(source, *relative.split("/")), join(destination, *relative.split("/")))


def publish_tree(source: str | os.PathLike, destination: str | os.PathLike,
                 marker: Sequence[str] = ()) -> None:
    """Publishes a copy of folder `source` as the new folder `destination` (refused if it
    exists), so that a reader never sees a partial copy.

    Locally: copied under a hidden temporary sibling name, then renamed (atomic). On an
    object store: every file copied, the `marker` files (what readers wait for, e.g.
    `saved_model.pb`) last.

    Raises:
      FileExistsError: `destination` exists already.
    """
    destination = os.fspath(destination)
    if exists(destination):
        raise FileExistsError(f"{destination} exists already")
    if not has_atomic_rename(destination):
        copy_tree(source, destination, last=marker)
        return
    staging = join(parent(destination), f".{basename(destination)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        copy_tree(source, staging)
        os.rename(staging, destination)  # fails if `destination` appeared meanwhile
    finally:
        remove_tree(staging)


def move_into_place(staging: str | os.PathLike, destination: str | os.PathLike, overwrite: bool = True) -> None:
    """Renames the finished local folder `staging` to `destination` (local paths only).

    An existing `destination` (only with `overwrite`) is first renamed aside, then the new
    folder renamed in, then the old one deleted: at every moment a complete folder (old or
    new) is at `destination`, except between the two renames.

    Raises:
      FileExistsError: `destination` exists and `overwrite` is False.
    """
    staging, destination = os.fspath(staging), os.fspath(destination)
    if not os.path.lexists(destination):
        os.rename(staging, destination)
        return
    if not overwrite:
        raise FileExistsError(f"{destination} exists already")
    retired = join(parent(destination), f".{basename(destination)}.old-{uuid.uuid4().hex[:8]}")
    os.rename(destination, retired)
    try:
        os.rename(staging, destination)
    except BaseException:
        os.rename(retired, destination)
        raise
    remove_tree(retired)


def replace_tree(source: str | os.PathLike, destination: str | os.PathLike, marker: Sequence[str] = ()) -> None:
    """Like `publish_tree`, but an existing `destination` is replaced: locally by
    `move_into_place`; on an object store the new files overwrite the old ones (marker
    last) and files the new copy lacks are deleted afterwards."""
    destination = os.fspath(destination)
    if not exists(destination):
        publish_tree(source, destination, marker)
        return
    if not has_atomic_rename(destination):
        old_files = set(walk_files(destination))
        copy_tree(source, destination, last=marker)
        for stale in sorted(old_files - set(walk_files(source))):
            _gfile().remove(join(destination, *stale.split("/")))
        return
    staging = join(parent(destination), f".{basename(destination)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        copy_tree(source, staging)
        move_into_place(staging, destination)
    finally:
        remove_tree(staging)


def glob(pattern: str) -> list[str]:
    """Paths matching a glob pattern, sorted."""
    return sorted(_gfile().glob(pattern))
