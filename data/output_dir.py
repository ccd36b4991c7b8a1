"""Output folders that appear complete or not at all.

A folder is built in a work folder and published at the end: on a local file system the
work folder is a hidden sibling (`.<name>.tmp-<pid>-<random>`) renamed into place; for a
URI (`gs://...`) it is a local temporary folder whose files are copied up with the
marker file (`manifest.json`) last. An interrupted run leaves at most a work folder,
never a half-written folder under the final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Sequence

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


def make_work_dir(output: str) -> str:
    """Creates and returns an empty local work folder for `output`."""
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
