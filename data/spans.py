"""Data spans: new slides arrive as new folders under a data root.

    DATA/1/<the data set's own layout>            span 1
    DATA/2/...                                    span 2 (or DATA/2026-12-01/...)

A span is named by an integer or a date (`YYYY-MM-DD`); spans are ordered by that value.
A root that is itself in the data set's layout (a `BreaKHis_v1` tree, or IDC patient
folders) is one span, named "0". A span's fingerprint is a hash of its file list with
sizes and modification times, so a span whose files changed counts as new.

`plan_window` decides, from the spans present and the ones the last training used, which
spans a run trains on and whether it trains at all (`WindowPlan`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import re
from typing import Mapping, Optional, Sequence

from histopath import fileio
from histopath.data import layouts
from histopath.errors import ConfigError, DataError

SINGLE_SPAN = "0"  # the name of a root that holds no span folders
_INTEGER = re.compile(r"\d{1,9}")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


def span_number(name: str) -> Optional[int]:
    """The span's order value: the integer, or YYYYMMDD of a date; None if not a span name."""
    if _INTEGER.fullmatch(name):
        return int(name)
    match = _DATE.fullmatch(name)
    if match:
        try:
            datetime.date(*map(int, match.groups()))
        except ValueError:
            return None
        return int("".join(match.groups()))
    return None


@dataclasses.dataclass(frozen=True)
class Span:
    """One span folder.

    Attributes:
      name: the folder name ("3", "2026-12-01"; "0" for a root without spans).
      number: its order value (`span_number`).
      folder: its path (local or URI).
    """

    name: str
    number: int
    folder: str


def _looks_like_dataset(folder: str, dataset: str) -> bool:
    """Whether `folder` is itself a data set root (not a folder of spans)."""
    if dataset == layouts.SLIDES:
        from histopath.data import slide_layout

        return slide_layout.is_slide_layout(folder)
    children = [name for name in fileio.listdir(folder) if not name.startswith(".")]
    if dataset == layouts.BREAKHIS:
        return "BreaKHis_v1" in children or "histology_slides" in children or "breast" in children
    for child in children:  # IDC: patient folders hold class folders 0 and 1
        path = fileio.join(folder, child)
        if fileio.isdir(path) and set(fileio.listdir(path)) & {"0", "1"}:
            return True
    return False


def find_spans(data_root: str, dataset: str) -> list[Span]:
    """The spans under `data_root`, oldest first.

    Raises:
      DataError: the root is missing, or a span folder's name does not parse (naming it),
        or two span folders stand for the same span.
    """
    root = fileio.absolute(data_root)
    if not fileio.isdir(root):
        raise DataError(f"data folder {root} does not exist")
    if _looks_like_dataset(root, dataset):
        return [Span(SINGLE_SPAN, 0, root)]
    children = [name for name in fileio.listdir(root) if not name.startswith(".")]
    folders = [name for name in children if fileio.isdir(fileio.join(root, name))]
    if not folders or all(span_number(name) is None for name in folders):
        return [Span(SINGLE_SPAN, 0, root)]  # scan_source reports what is wrong with it
    bad = sorted(name for name in folders if span_number(name) is None)
    if bad:
        raise DataError(f"{root}: span folder(s) {', '.join(bad)}: the name does not parse as a span "
                        "(an integer such as 3, or a date such as 2026-12-01)")
    spans = sorted((Span(name, span_number(name), fileio.join(root, name)) for name in folders),
                   key=lambda span: span.number)
    numbers = [span.number for span in spans]
    duplicates = sorted({span.name for span in spans if numbers.count(span.number) > 1})
    if duplicates:
        raise DataError(f"{root}: span folders {', '.join(duplicates)} stand for the same span")
    return spans


def fingerprint(span: Span) -> str:
    """A hash of the span's files: relative path, size and modification time of each."""
    digest = hashlib.sha256()
    for relative, size, mtime in layouts.list_files(span.folder):
        digest.update(f"{relative}\0{size}\0{mtime}\n".encode("utf-8"))
    return digest.hexdigest()[:16]


def parse_window(value: str | int) -> Optional[int]:
    """"all" -> None (every span); N -> the last N spans.

    Raises:
      ConfigError: anything else.
    """
    if isinstance(value, str) and value.strip().lower() == "all":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"span window must be 'all' or a number of spans, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"span window must be at least 1 span, got {number}")
    return number


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """What a run trains on.

    Attributes:
      window: names of the spans the run's examples hold, oldest first.
      new_spans: the spans of the window the last training did not use (or used with
        other content).
      new_patients: patients of the new spans that the last training did not see.
      retrain: whether the run trains (a first run always does).
      reason: one sentence saying why (or why not).
    """

    window: tuple[str, ...]
    new_spans: tuple[str, ...]
    new_patients: tuple[str, ...]
    retrain: bool
    reason: str


def plan_window(
    spans: Sequence[str],
    fingerprints: Mapping[str, str],
    patients: Mapping[str, Sequence[str]],
    last_trained: Optional[Mapping[str, str]],
    window: Optional[int],
    min_new_patients: int,
) -> WindowPlan:
    """Chooses the training window and whether to retrain.

    Args:
      spans: every span name, oldest first.
      fingerprints: span -> its current fingerprint.
      patients: span -> the patient ids in it.
      last_trained: span -> fingerprint of the window the last training used; None when
        nothing was trained yet.
      window: train on the last `window` spans; None = all.
      min_new_patients: retrain only when at least this many patients are new (0 or 1 =
        on every new or changed span).
    """
    chosen = tuple(spans if window is None else spans[-window:])
    if last_trained is None:
        return WindowPlan(chosen, chosen, (), True, "first training")
    new_spans = tuple(s for s in chosen if last_trained.get(s) != fingerprints[s])
    seen = {p for s in last_trained if s in patients for p in patients[s]}
    new_patients = tuple(sorted({p for s in new_spans for p in patients[s]} - seen))
    if not new_spans:
        return WindowPlan(chosen, (), (), False, "no new span since the last training")
    if len(new_patients) < min_new_patients:
        return WindowPlan(chosen, new_spans, new_patients, False,
                          f"{len(new_patients)} new patient(s) in span(s) {', '.join(new_spans)}, "
                          f"fewer than the {min_new_patients} that trigger retraining")
    return WindowPlan(chosen, new_spans, new_patients, True,
                      f"new span(s) {', '.join(new_spans)} with {len(new_patients)} new patient(s)")
