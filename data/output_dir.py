"""Write-to-a-temporary-sibling-then-rename for output folders.

An interrupted run leaves at most a `<name>.tmp-<random>` folder, never a half-written
folder under the final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from histopath.errors import DataError


def check_output_free(output: str, overwrite: bool) -> None:
    """Refuses an existing output folder unless `overwrite`.

    Raises:
      DataError: `output` exists (and `overwrite` is False), or is a file.
    """
    if os.path.lexists(output):
        if not os.path.isdir(output):
            raise DataError(f"output {output} exists and is not a folder")
        if not overwrite:
            raise DataError(
                f"output folder {output} already exists (use --overwrite to replace it)"
            )


def make_temp_sibling(output: str) -> str:
    """Creates and returns an empty temporary folder next to `output`."""
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(output)) + ".tmp-", dir=parent)


def swap_into_place(temp: str, output: str, overwrite: bool) -> None:
    """Renames the finished `temp` folder to `output`.

    An existing `output` (allowed only with `overwrite`) is first renamed aside, then
    the new folder renamed in, then the old one deleted: at every moment either the old or
    the new complete folder is at `output`, except between the two renames.

    Raises:
      DataError: `output` appeared meanwhile and `overwrite` is False.
    """
    output = os.path.abspath(output)
    old = None
    if os.path.lexists(output):
        check_output_free(output, overwrite)
        old = tempfile.mkdtemp(
            prefix=os.path.basename(output) + ".old-", dir=os.path.dirname(output)
        )
        os.rmdir(old)
        os.rename(output, old)
    try:
        os.rename(temp, output)
    except BaseException:
        if old is not None:
            os.rename(old, output)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_quietly(path: str) -> None:
    """Deletes a temporary folder, ignoring errors."""
    shutil.rmtree(path, ignore_errors=True)
