"""Parsers for the on-disk layouts of the BreakHis and IDC data sets.

Everything here works on file NAMES only (no image is opened), so a whole data set can be
listed, labelled and split by patient in a fraction of a second.

BreakHis (``BreaKHis_v1``)::

    .../breast/<benign|malignant>/SOB/<subtype>/SOB_<B|M>_<code>_<yy>-<slide>/<mag>X/
        SOB_<B|M>_<code>-<yy>-<slide>-<mag>-<seq>.png

IDC (Breast Histopathology Images)::

    <patient>/<class>/<patient>_idx5_x<X>_y<Y>_class<C>.png
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Iterable, Iterator, Sequence

from histopath import fileio
from histopath.data import features
from histopath.errors import ConfigError, DataError

BREAKHIS = "breakhis"
IDC = "idc"
DATASETS = (BREAKHIS, IDC)
SLIDES = "slides"  # whole slides with a labels CSV or a folder per label (data/slide_layout.py)
PIPELINE_DATASETS = DATASETS + (SLIDES,)  # what the pipeline's ingestion and evaluate take

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
BREAKHIS_MAGNIFICATIONS = (40, 100, 200, 400)

# Subtype code -> (folder name, label).
BREAKHIS_SUBTYPES = {
    "A": ("adenosis", 0),
    "F": ("fibroadenoma", 0),
    "PT": ("phyllodes_tumor", 0),
    "TA": ("tubular_adenoma", 0),
    "DC": ("ductal_carcinoma", 1),
    "LC": ("lobular_carcinoma", 1),
    "MC": ("mucinous_carcinoma", 1),
    "PC": ("papillary_carcinoma", 1),
}
_CLASS_LETTERS = {"B": 0, "M": 1}
_CLASS_FOLDERS = {"benign": 0, "malignant": 1}

_BREAKHIS_FILE = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<code>[A-Z]+)-(?P<year>\d{2})-(?P<slide>(?P<patient>\d+)[A-Z]*)"
    r"-(?P<mag>\d+)-(?P<seq>\d+)\.(?P<ext>[A-Za-z]+)$"
)
_BREAKHIS_SLIDE_DIR = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<code>[A-Z]+)_(?P<year>\d{2})-(?P<slide>\d+[A-Z]*)$"
)
_IDC_FILE = re.compile(
    r"^(?P<patient>\d+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<cls>\d+)\.(?P<ext>[A-Za-z]+)$"
)


def idc_patch_position(path: str) -> tuple[str, int, int] | None:
    """`(patient, x, y)` from an IDC patch file name (`<patient>_idx5_x<X>_y<Y>_class<C>.png`),
    whatever folder it is in; None for any other name."""
    match = _IDC_FILE.match(os.path.basename(path))
    return (match["patient"], int(match["x"]), int(match["y"])) if match else None


class LayoutNameError(ValueError):
    """A file name or its folders do not follow the data set's layout (message = reason)."""


@dataclasses.dataclass(frozen=True)
class ParsedFile:
    """What the layout tells about one image file, before the image is read.

    Attributes:
      relative_path: path relative to the source folder, '/'-separated.
      dataset: "breakhis" or "idc".
      label: 0 benign / IDC-negative, 1 malignant / IDC-positive.
      patient_id: the unit of splitting (BreakHis: leading digits of the slide id).
      subtype: BreakHis tumour subtype code (A, F, PT, TA, DC, LC, MC, PC), else None.
      magnification: BreakHis magnification (40, 100, 200, 400), else None.
      slide_id: BreakHis slide id such as "22549AB", else None.
      patch_x: IDC x offset of the patch in the patient's slide, else None.
      patch_y: IDC y offset of the patch in the patient's slide, else None.
    """

    relative_path: str
    dataset: str
    label: int
    patient_id: str
    subtype: str | None = None
    magnification: int | None = None
    slide_id: str | None = None
    patch_x: int | None = None
    patch_y: int | None = None

    def feature_values(self) -> dict[str, int | str]:
        """The record's layout-derived features, keyed by the names in `features`."""
        values: dict[str, int | str] = {
            features.LABEL: self.label,
            features.PATIENT_ID: self.patient_id,
            features.SOURCE_PATH: self.relative_path,
            features.DATASET: self.dataset,
        }
        if self.dataset == BREAKHIS:
            values[features.SUBTYPE] = self.subtype
            values[features.MAGNIFICATION] = self.magnification
            values[features.SLIDE_ID] = self.slide_id
        else:
            values[features.PATCH_X] = self.patch_x
            values[features.PATCH_Y] = self.patch_y
        return values


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    """A file left out of the data set, and why.

    Attributes:
      path: path relative to the source folder.
      reason: one human-readable sentence.
    """

    path: str
    reason: str


@dataclasses.dataclass
class ScanResult:
    """The outcome of listing a source folder.

    Attributes:
      files: parsed image files, sorted by relative path.
      skipped: files whose name or folders do not follow the layout.
      filtered: number of well-named files left out by the magnification filter, by
        magnification.
    """

    files: list[ParsedFile]
    skipped: list[SkippedFile]
    filtered: dict[int, int]


def _parent_folders(path: str, source: str | None) -> tuple[list[str], int]:
    """The folders above a file, innermost first, and how many of them are inside source.

    Folders inside the source folder must follow the layout; folders above it are only
    cross-checked while they look like layout folders (so `--source` may point anywhere
    inside the tree, and a tree placed under any folder name works).
    """
    if source is None:
        parts = [p for p in path.replace("\\", "/").split("/") if p][:-1]
        return parts[::-1], len(parts)
    inside = _relative(path, source).split("/")[:-1]
    return inside[::-1] + _folders_innermost_first(source), len(inside)


@functools.lru_cache(maxsize=64)
def _folders_innermost_first(folder: str) -> list[str]:
    if fileio.is_uri(folder):  # gs://bucket/a/b -> b, a (the bucket is no layout folder)
        return [p for p in folder.split("://", 1)[1].split("/")[1:] if p][::-1]
    return [p for p in os.path.normpath(os.path.abspath(folder)).split(os.sep) if p][::-1]


def _relative(path: str, source: str | None) -> str:
    """`path` relative to `source`, '/'-separated (fast path for paths under source)."""
    if source is None:
        return path.replace("\\", "/")
    prefix = source.rstrip(os.sep) + os.sep
    if path.startswith(prefix):
        relative = path[len(prefix):]
    else:
        relative = os.path.relpath(path, source)
    return relative.replace(os.sep, "/")


def _check_folders(
    parents: list[str], strict_count: int, checks: Sequence[tuple[re.Pattern, object]]
) -> None:
    """Cross-checks the folders above a file against what its name says.

    Args:
      parents: folders innermost first.
      strict_count: the first `strict_count` folders must have the expected kind; beyond
        them checking stops at the first folder that is not of the expected kind.
      checks: per depth, a regex recognising the folder's kind and a function
        `folder -> reason | None` testing that it agrees with the file name.

    Raises:
      LayoutNameError: a folder is of the wrong kind (inside the source) or disagrees.
    """
    for depth, (kind, agrees) in enumerate(checks):
        if depth >= len(parents):
            return
        folder = parents[depth]
        if not kind.fullmatch(folder):
            if depth < strict_count:
                raise LayoutNameError(
                    f"folder {folder!r} is not where the layout expects it "
                    f"(expected a folder like {kind.pattern!r})"
                )
            return
        reason = agrees(folder)
        if reason:
            raise LayoutNameError(reason)


_MAG_DIR = re.compile(r"\d+X")
_ANY_SLIDE_DIR = re.compile(r"SOB_[BM]_[A-Z]+_\d{2}-\d+[A-Z]*")
_SUBTYPE_DIR = re.compile("|".join(folder for folder, _ in BREAKHIS_SUBTYPES.values()))
_SOB_DIR = re.compile("SOB")
_CLASS_DIR = re.compile("benign|malignant")
_IDC_CLASS_DIR = re.compile(r"\d")
_IDC_PATIENT_DIR = re.compile(r"\d+")


def _match_file_name(pattern: re.Pattern, path: str, expected: str) -> re.Match:
    """Matches a file's base name against its layout's pattern and checks the extension.

    Raises:
      LayoutNameError: naming `expected` (the pattern in words) or the bad extension.
    """
    match = pattern.match(os.path.basename(path))
    if not match:
        raise LayoutNameError(f"file name does not match the {expected}")
    if "." + match["ext"].lower() not in IMAGE_EXTENSIONS:
        raise LayoutNameError(f"not an image file extension: .{match['ext']}")
    return match


def parse_breakhis_path(path: str, source: str | None = None) -> ParsedFile:
    """Parses one BreakHis file path and cross-checks it against its folders.

    Args:
      path: the file's path: relative to the data set (all its folders are checked), or
        a path under `source`.
      source: the source folder; folders inside it must follow the layout, folders above
        it are cross-checked while they look like layout folders.

    Returns:
      The parsed file; `relative_path` is relative to `source` (or `path` itself).

    Raises:
      LayoutNameError: the name does not parse or disagrees with its folders.
    """
    match = _match_file_name(
        _BREAKHIS_FILE, path, "BreakHis pattern SOB_<B|M>_<subtype>-<yy>-<slide>-<mag>-<seq>.png"
    )
    label = _CLASS_LETTERS[match["cls"]]
    code = match["code"]
    if code not in BREAKHIS_SUBTYPES:
        raise LayoutNameError(f"unknown BreakHis subtype code {code!r}")
    subtype_folder, subtype_label = BREAKHIS_SUBTYPES[code]
    if subtype_label != label:
        raise LayoutNameError(
            f"subtype {code} is {features.LABEL_NAMES[subtype_label]} but the file name "
            f"says {match['cls']} ({features.LABEL_NAMES[label]})"
        )
    magnification = int(match["mag"])
    if magnification not in BREAKHIS_MAGNIFICATIONS:
        raise LayoutNameError(f"magnification {magnification} is not one of 40, 100, 200, 400")
    slide_folder = f"SOB_{match['cls']}_{code}_{match['year']}-{match['slide']}"
    label_name = features.LABEL_NAMES[label]

    def disagree(kind: str, expected: str):
        return lambda folder: (
            None if folder == expected else
            f"{kind} folder {folder!r} disagrees with the file name (expected {expected!r})"
        )

    parents, strict_count = _parent_folders(path, source)
    _check_folders(parents, strict_count, [
        (_MAG_DIR, disagree("magnification", f"{magnification}X")),
        (_ANY_SLIDE_DIR, disagree("slide", slide_folder)),
        (_SUBTYPE_DIR, disagree("subtype", subtype_folder)),
        (_SOB_DIR, lambda folder: None),
        (_CLASS_DIR, disagree("class", label_name)),
    ])
    relative = _relative(path, source)
    return ParsedFile(
        relative_path=relative,
        dataset=BREAKHIS,
        label=label,
        patient_id=match["patient"],
        subtype=code,
        magnification=magnification,
        slide_id=match["slide"],
    )


def parse_idc_path(path: str, source: str | None = None) -> ParsedFile:
    """Parses one IDC patch path and cross-checks it against its folders.

    Args:
      path: the file's path: relative to the data set (all its folders are checked), or
        a path under `source`.
      source: the source folder; folders inside it must follow the layout, folders above
        it are cross-checked while they look like layout folders.

    Returns:
      The parsed file; `relative_path` is relative to `source` (or `path` itself).

    Raises:
      LayoutNameError: the name does not parse or disagrees with its folders.
    """
    match = _match_file_name(_IDC_FILE, path, "IDC pattern <patient>_idx5_x<X>_y<Y>_class<C>.png")
    if match["cls"] not in ("0", "1"):
        raise LayoutNameError(f"class {match['cls']} in the file name is neither 0 nor 1")
    label = int(match["cls"])
    parents, strict_count = _parent_folders(path, source)
    _check_folders(parents, strict_count, [
        (_IDC_CLASS_DIR, lambda folder: None if folder == match["cls"] else (
            f"class folder {folder!r} disagrees with the file name (class{match['cls']})")),
        (_IDC_PATIENT_DIR, lambda folder: None if folder == match["patient"] else (
            f"patient folder {folder!r} disagrees with the file name "
            f"(patient {match['patient']})")),
    ])
    relative = _relative(path, source)
    return ParsedFile(
        relative_path=relative,
        dataset=IDC,
        label=label,
        patient_id=match["patient"],
        patch_x=int(match["x"]),
        patch_y=int(match["y"]),
    )


PARSERS = {BREAKHIS: parse_breakhis_path, IDC: parse_idc_path}


def walk_files(source: str) -> Iterator[str]:
    """Yields every regular file under `source` (a local folder or a URI), sorted.

    Local folders: symlinks are followed, loop-safe. Hidden files and folders (name
    starting with '.') are ignored.
    """
    for relative, _, _ in list_files(source):
        yield fileio.join(source, *relative.split("/"))


def list_files(source: str) -> list[tuple[str, int, int]]:
    """Every regular file under `source` as (relative path with '/', size in bytes,
    modification time in ns), sorted; hidden files and folders left out."""
    if fileio.is_uri(source):
        return _list_uri_files(source)
    found = []
    seen_dirs: set[str] = set()
    for root, dirs, files in os.walk(source, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:  # a symlink loop or a second link to the same folder
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            try:
                stat = os.stat(path)
            except OSError:  # a dangling link: listed, refused when read
                stat = None
            relative = os.path.relpath(path, source).replace(os.sep, "/")
            found.append((relative, stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1))
    return sorted(found)


def _list_uri_files(source: str) -> list[tuple[str, int, int]]:
    import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
    import tensorflow as tf

    source = source.rstrip("/")
    found = []
    for root, dirs, files in tf.io.gfile.walk(source):
        relative_root = root.rstrip("/")[len(source):].strip("/")
        if any(part.startswith(".") for part in relative_root.split("/") if part):
            continue
        for name in files:
            if name.startswith("."):
                continue
            stat = tf.io.gfile.stat(f"{root.rstrip('/')}/{name}")
            relative = f"{relative_root}/{name}" if relative_root else name
            found.append((relative, int(stat.length), int(stat.mtime_nsec)))
    return sorted(found)


def parse_magnifications(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """Parses "40,100" (or a sequence of ints) into a sorted tuple; None means all.

    Raises:
      ConfigError: a value is not one of 40, 100, 200, 400.
    """
    if text is None:
        return None
    items: Iterable = text.split(",") if isinstance(text, str) else text
    values = set()
    for item in items:
        try:
            value = int(str(item).strip().rstrip("xX"))
        except ValueError:
            raise ConfigError(f"magnification {item!r} is not a number") from None
        if value not in BREAKHIS_MAGNIFICATIONS:
            raise ConfigError(f"magnification {value} is not one of 40, 100, 200, 400")
        values.add(value)
    if not values:
        raise ConfigError("no magnification given")
    return tuple(sorted(values))


def scan_source(
    dataset: str, source: str, magnifications: Sequence[int] | None = None
) -> ScanResult:
    """Lists and parses every file under `source` by name (no image is opened).

    Args:
      dataset: "breakhis" or "idc".
      source: folder holding the data set; for BreakHis the folder containing
        `BreaKHis_v1` or any folder inside that tree.
      magnifications: BreakHis only: keep these magnifications (None = all).

    Returns:
      The parsed files and the files skipped because of their names.

    Raises:
      ConfigError: unknown data set, or magnifications given for IDC.
      DataError: `source` is missing, not a folder, empty, or not in the named layout.
    """
    if dataset not in PARSERS:
        raise ConfigError(f"unknown dataset {dataset!r} (expected one of {', '.join(DATASETS)})")
    if magnifications is not None and dataset != BREAKHIS:
        raise ConfigError("--magnifications applies to BreakHis only")
    source = fileio.absolute(source)
    if not fileio.exists(source):
        raise DataError(f"source folder {source} does not exist")
    if not fileio.isdir(source):
        raise DataError(f"source {source} is not a folder")
    parser = PARSERS[dataset]
    files: list[ParsedFile] = []
    skipped: list[SkippedFile] = []
    filtered: dict[int, int] = {}
    other_layout_matches = 0
    first_seen: dict[str, str] = {}
    other_parser = PARSERS[IDC if dataset == BREAKHIS else BREAKHIS]
    for path in walk_files(source):
        try:
            parsed = parser(path, source)
        except LayoutNameError as error:
            relative = _relative(path, source)
            skipped.append(SkippedFile(relative, str(error)))
            try:
                other_parser(path, source)
                other_layout_matches += 1
            except LayoutNameError:
                pass
            continue
        if magnifications is not None and parsed.magnification not in magnifications:
            filtered[parsed.magnification] = filtered.get(parsed.magnification, 0) + 1
            continue
        # File names are unique within both data sets (they encode patient/slide, position
        # or sequence); a second copy (e.g. Kaggle's IDC zip holds every patch twice) would
        # leak one image into two records.
        name = os.path.basename(path)
        if name in first_seen:
            skipped.append(SkippedFile(parsed.relative_path,
                                       f"duplicate of {first_seen[name]} (same file name)"))
            continue
        first_seen[name] = parsed.relative_path
        files.append(parsed)
    if not files:
        total = len(skipped) + sum(filtered.values())
        if total == 0:
            raise DataError(f"source folder {source} holds no files")
        if filtered and not skipped:
            raise DataError(
                f"no {dataset} image in {source} has magnification "
                f"{', '.join(map(str, magnifications or ()))} (found "
                + ", ".join(f"{n} at {m}X" for m, n in sorted(filtered.items())) + ")"
            )
        hint = ""
        if other_layout_matches:
            other = IDC if dataset == BREAKHIS else BREAKHIS
            hint = (f"; {other_layout_matches} files look like the {other} layout "
                    f"(--dataset {other}?)")
        example = skipped[0]
        raise DataError(
            f"{source} is not in the {dataset} layout: none of its {total} files is named "
            f"like a {dataset} image (e.g. {example.path}: {example.reason}){hint}"
        )
    return ScanResult(files=files, skipped=skipped, filtered=filtered)
