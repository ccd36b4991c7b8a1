"""Data roots of spans made of symlinks to the images of one data set (nothing copied).

    ROOT/1/<the data set's layout>   the files chosen for span 1
    ROOT/2/...                       span 2 (some patients only here, some in both)
"""

from __future__ import annotations

import collections
import os
import pathlib
from typing import Iterable, Sequence

from histopath.data import layouts
from histopath.data.split import DEFAULT_SPLITS, assign_split


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


def split_and_label(files: dict[str, list[layouts.ParsedFile]], seed: int) -> dict[str, tuple[str, int]]:
    """patient -> (its split under `seed` and the default fractions, its highest label)."""
    return {patient: (assign_split(patient, DEFAULT_SPLITS, seed), max(f.label for f in patient_files))
            for patient, patient_files in files.items()}


def pick(placement: dict[str, tuple[str, int]], wanted: dict[tuple[str, int], int],
         exclude: Sequence[str] = ()) -> list[str]:
    """`wanted[(split, label)]` patients of each kind, in id order, none of `exclude`."""
    chosen = []
    for kind, count in wanted.items():
        matching = sorted(p for p, placed in placement.items() if placed == kind and p not in exclude)
        if len(matching) < count:
            raise ValueError(f"only {len(matching)} patients of {kind}, {count} wanted")
        chosen += matching[:count]
    return chosen
