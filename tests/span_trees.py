"""Data roots of spans made of symlinks to the images of one data set (nothing copied).

    ROOT/1/<the data set's layout>   the files chosen for span 1
    ROOT/2/...                       span 2 (some patients only here, some in both)
"""

from __future__ import annotations

import collections
import os
import pathlib
from typing import Iterable

from histopath.data import layouts


def link_files(source: pathlib.Path, destination: pathlib.Path, relative_paths: Iterable[str]) -> None:
    """Symlinks `source/<path>` at `destination/<path>` for every path."""
    for relative in relative_paths:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source / relative, target)


def files_by_patient(source: pathlib.Path, dataset: str) -> dict[str, list[layouts.ParsedFile]]:
    """The data set's files by patient, each patient's in path order."""
    grouped: dict[str, list[layouts.ParsedFile]] = collections.defaultdict(list)
    for parsed in layouts.scan_source(dataset, str(source)).files:
        grouped[parsed.patient_id].append(parsed)
    return dict(grouped)


def patients_by_label(files: dict[str, list[layouts.ParsedFile]]) -> dict[int, list[str]]:
    """label -> the patients of that (highest) label, in id order."""
    grouped: dict[int, list[str]] = {0: [], 1: []}
    for patient in sorted(files):
        grouped[max(f.label for f in files[patient])].append(patient)
    return grouped
