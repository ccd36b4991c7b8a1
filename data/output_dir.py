"""Output folders that appear complete or not at all.

A folder is built in a work folder and published at the end: on a local file system the
work folder is a hidden sibling (`.<name>.tmp-<pid>-<random>`) renamed into place; for a
URI (`gs://...`) it is a local temporary folder whose files are copied up with the
marker file (`manifest.json`) last. An interrupted run removes its work folder (SIGINT
and SIGTERM, see `histopath.interrupts`); one killed outright leaves it, and the next run
for the same output removes it (`remove_stale_work_dirs`). Never is a half-written folder
left under the final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Sequence

import psutil

from histopath import fileio
from histopath.errors import DataError

WORK_DIR_MARKER = ".tmp-"


def check_output_free(output: str, overwrite: bool) -> None:
    """Refuses an existing output folder unless `overwrite`.

    Raises:
      DataError: `output` exists (and `overwrite` is False), or is a file.
    """
    if fileio.is_uri(output):
        exists, is_dir = fileio.exists(output), fileio.isdir(output)
    else:
        exists, is_dir = os.path.lexists(output), os.path.isdir(output)
    if exists:
        if not is_dir:
            raise DataError(f"output {output} exists and is not a folder")
        if not overwrite:
            raise DataError(f"output folder {output} already exists (use --overwrite to replace it)")


def remove_stale_work_dirs(output: str) -> list[str]:
    """Removes the work folders of earlier runs for `output` that were killed outright:
    folders named `.<name>.tmp-<pid>-*` whose process is gone.

    Returns:
      The removed folders.
    """
    name = f".{fileio.basename(output)}{WORK_DIR_MARKER}"
    parent = tempfile.gettempdir() if fileio.is_uri(output) else os.path.dirname(os.path.abspath(output))
    removed = []
    try:
        entries = list(os.scandir(parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(name) and entry.is_dir(follow_symlinks=False)):
            continue
        pid_text = entry.name[len(name):].split("-", 1)[0]
        if pid_text.isdigit() and not psutil.pid_exists(int(pid_text)):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def make_work_dir(output: str) -> str:
    """Creates and returns an empty local work folder for `output`, after removing the
    folders earlier killed runs left (`remove_stale_work_dirs`)."""
    remove_stale_work_dirs(output)
    prefix = f".{fileio.basename(output)}{WORK_DIR_MARKER}{os.getpid()}-"
    if fileio.is_uri(output):
        return tempfile.mkdtemp(prefix=prefix)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def publish(work_dir: str, output: str, overwrite: bool, marker: Sequence[str] = ()) -> None:
    """Puts the finished work folder at `output` (see the module docstring).

    Raises:
      DataError: `output` appeared meanwhile and `overwrite` is False.
    """
    try:
        if not fileio.is_uri(output):
            fileio.move_into_place(work_dir, os.path.abspath(output), overwrite)
            return
        check_output_free(output, overwrite)
        (fileio.replace_tree if overwrite else fileio.publish_tree)(work_dir, output, marker=marker)
        remove_quietly(work_dir)
    except FileExistsError:
        raise DataError(f"output folder {output} appeared meanwhile (use --overwrite to replace it)") from None


def remove_quietly(path: str) -> None:
    """Deletes a local work folder, ignoring errors."""
    shutil.rmtree(path, ignore_errors=True)
