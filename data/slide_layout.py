"""The whole-slide data set layout (`--dataset slides`): slides, their labels, and region
annotations that give tiles their own labels.

    SOURCE/
      slides.csv                 slide,patient,label[,...]   (one row per slide)
      <slide files>              .svs .ndpi .mrxs .scn .bif .tif/.tiff (tiled) ...
      <slide stem>.geojson       optional: region annotations (QuPath export)
      <slide stem>.labels.csv    optional: labelled rectangles x,y,width,height,label[,...]
                                 (what `histopath idc-slides` writes per patient)
or, without `slides.csv`, a folder per label (`benign/`, `malignant/`) of slide files; each slide is then its own patient (its file name without extension).

SOURCE may be a local folder or any URI `tf.io.gfile` reads (`gs://bucket/slides`): every
listing and read goes through `histopath.fileio`.

`slide` is the file's path relative to SOURCE; `label` is 0/1 or benign/malignant; further
columns are ignored. Every problem is refused naming the file and the line (CSV) or the
feature (GeoJSON).

Tile labels (`TileLabeller`): a slide with annotations labels each tile by the class
covering most of its area (sampled on an 8 x 8 grid of points per tile; where a malignant
and a benign region overlap, malignant wins). A tile that annotations cover for less than
half is **dropped** ("unannotated"): on an annotated slide the unannotated area is not
known to be of either class. A slide without annotations gives every tile the slide label.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Any, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from histopath import fileio, slides as slides_lib
from histopath.errors import DataError

LABELS_CSV = "slides.csv"
GEOJSON_SUFFIX = ".geojson"
PATCH_LABELS_SUFFIX = ".labels.csv"
REQUIRED_COLUMNS = ("slide", "patient", "label")
SAMPLES_PER_TILE = 8  # annotation coverage is sampled on this many points a side per tile
MIN_COVERED = 0.5  # a tile needs at least this share covered by annotations to be labelled
UNANNOTATED = "unannotated"  # QC reason of a tile of an annotated slide outside every region
_LABEL_WORDS = {"0": 0, "benign": 0, "negative": 0, "normal": 0,
                "1": 1, "malignant": 1, "positive": 1, "tumor": 1, "tumour": 1}
# Not "0"/"1": a root of numbered span folders (`data.spans`) would read as label folders.
_LABEL_FOLDERS = {"benign": 0, "malignant": 1}


@dataclasses.dataclass(frozen=True)
class SlideEntry:
    """One slide of the data set.

    Attributes:
      relative_path: the slide file, relative to the source folder ('/'-separated).
      slide_id: its file name without extension (unique in the data set).
      patient_id: the unit of splitting.
      label: the slide label, 0 benign / 1 malignant.
      annotations: the annotation file relative to the source (GeoJSON or labels CSV), or "".
    """

    relative_path: str
    slide_id: str
    patient_id: str
    label: int
    annotations: str = ""


def parse_label(text: str, where: str) -> int:
    """0 or 1 from "0"/"1"/"benign"/"malignant" (and negative/positive, normal/tumour).

    Raises:
      DataError: anything else (the message starts with `where`).
    """
    value = _LABEL_WORDS.get(str(text).strip().lower())
    if value is None:
        raise DataError(f"{where}: label {text!r} is not 0/1 or benign/malignant")
    return value


def _is_file(path: str) -> bool:
    """Whether `path` (local or URI) is an existing file, not a folder."""
    return fileio.exists(path) and not fileio.isdir(path)


def _read_bytes(path: str) -> bytes:
    """The whole (small) file, local or URI.

    Raises:
      DataError: it cannot be read, naming it.
    """
    errors: tuple = (OSError,)
    if fileio.is_uri(path):
        import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
        import tensorflow as tf

        errors += (tf.errors.OpError,)
    try:
        return fileio.read_bytes(path)
    except errors as error:
        reason = getattr(error, "strerror", None) or getattr(error, "message", None) or error
        raise DataError(f"{path}: cannot read ({reason})") from None


def _csv_rows(path: str) -> csv.DictReader:
    """A CSV reader over the file's text (a UTF-8 byte-order mark dropped).

    Raises:
      DataError: unreadable, or not UTF-8 text.
    """
    try:
        text = _read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a UTF-8 text file ({error})") from None
    return csv.DictReader(io.StringIO(text, newline=""))


def _annotation_for(source: str, relative_path: str) -> str:
    """The annotation file beside a slide (GeoJSON first), relative to `source`; "" if none."""
    stem = os.path.splitext(relative_path)[0]
    for suffix in (GEOJSON_SUFFIX, PATCH_LABELS_SUFFIX):
        if _is_file(fileio.join(source, stem + suffix)):
            return stem + suffix
    return ""


def read_slides_csv(source: str) -> List[SlideEntry]:
    """The slides listed in `source/slides.csv`.

    Raises:
      DataError: a missing column, an empty or duplicate slide, an empty patient, a bad
        label or a slide file that does not exist, naming the file and line.
    """
    path = fileio.join(source, LABELS_CSV)
    try:
        reader = _csv_rows(path)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DataError(f"{path} line 1: missing column(s) {', '.join(missing)} "
                            f"(expected a header slide,patient,label[,...], got {','.join(columns) or 'nothing'})")
        reader.fieldnames = columns
        entries, seen = [], {}
        for row in reader:
            where = f"{path} line {reader.line_num}"
            if None in row or any(row.get(c) is None for c in REQUIRED_COLUMNS):
                raise DataError(f"{where}: expected {len(columns)} columns ({','.join(columns)})")
            relative = row["slide"].strip().replace("\\", "/")
            patient = row["patient"].strip()
            if not relative:
                raise DataError(f"{where}: empty slide")
            if not patient:
                raise DataError(f"{where}: slide {relative}: empty patient")
            label = parse_label(row["label"], f"{where}: slide {relative}")
            if os.path.isabs(relative) or ".." in relative.split("/"):
                raise DataError(f"{where}: slide {relative} must be a path inside {source}")
            if not _is_file(fileio.join(source, relative)):
                raise DataError(f"{where}: slide {relative} not found in {source}")
            slide_id = slides_lib.slide_id(relative)
            if slide_id in seen:
                raise DataError(f"{where}: slide {relative} repeats the slide id {slide_id} of line {seen[slide_id]}")
            seen[slide_id] = reader.line_num
            entries.append(SlideEntry(relative, slide_id, patient, label, _annotation_for(source, relative)))
    except csv.Error as error:
        raise DataError(f"{path}: not a CSV file ({error})") from None
    if not entries:
        raise DataError(f"{path}: lists no slide (expected rows slide,patient,label)")
    return entries


def _label_folders(source: str) -> List[SlideEntry]:
    entries, seen = [], {}
    for folder in fileio.listdir(source):
        label = _LABEL_FOLDERS.get(folder.lower())
        if label is None or not fileio.isdir(fileio.join(source, folder)):
            continue
        for name in fileio.listdir(fileio.join(source, folder)):
            relative = f"{folder}/{name}"
            if not _is_slide_name(fileio.join(source, folder, name)):
                continue
            slide_id = slides_lib.slide_id(relative)
            if slide_id in seen:
                raise DataError(f"{source}: slides {seen[slide_id]} and {relative} have the same name {slide_id}")
            seen[slide_id] = relative
            entries.append(SlideEntry(relative, slide_id, slide_id, label, _annotation_for(source, relative)))
    return entries


def _is_slide_name(path: str) -> bool:
    lower = path.lower()
    return (lower.endswith(slides_lib.SLIDE_EXTENSIONS) or lower.endswith(slides_lib.TIFF_EXTENSIONS)) \
        and _is_file(path)


def is_slide_layout(folder: str) -> bool:
    """Whether `folder` is itself a slide data set (a `slides.csv`, or label folders of slides)."""
    if _is_file(fileio.join(folder, LABELS_CSV)):
        return True
    try:
        return bool(_label_folders(folder))
    except (OSError, DataError):
        return False


def scan_slides(source: str) -> List[SlideEntry]:
    """The slides of a source folder: `slides.csv`, else a folder per label.

    Raises:
      DataError: not a folder, no slide, or a bad labels file (naming file and line).
    """
    if not fileio.isdir(source):
        raise DataError(f"{source}: not a folder")
    if _is_file(fileio.join(source, LABELS_CSV)):
        return read_slides_csv(source)
    entries = _label_folders(source)
    if not entries:
        raise DataError(f"{source}: no slides: expected {LABELS_CSV} (slide,patient,label) or a folder per label "
                        "(benign/ and malignant/) of slide files")
    return entries


# --- region annotations ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Region:
    """One annotated polygon in level-0 pixels: exterior ring, holes, class."""

    exterior: np.ndarray
    holes: tuple
    label: int


def _ring(value: Any, where: str) -> np.ndarray:
    try:
        ring = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: coordinates are not a list of [x, y] points") from None
    if ring.ndim != 2 or ring.shape[1] < 2 or len(ring) < 3 or not np.isfinite(ring).all():
        raise DataError(f"{where}: a ring needs at least 3 finite [x, y] points")
    return ring[:, :2]


def _feature_label(properties: Mapping[str, Any], where: str) -> int:
    classification = properties.get("classification")
    name = None
    if isinstance(classification, Mapping):
        name = classification.get("name")
    elif isinstance(classification, str):
        name = classification
    for key in ("label", "class", "classification_name"):
        if name is None and properties.get(key) is not None:
            name = properties[key]
    if name is None:
        raise DataError(f"{where}: no class (properties.classification.name or properties.label)")
    return parse_label(str(name), where)


def read_geojson(path: str) -> List[Region]:
    """The labelled polygons of a GeoJSON file (a FeatureCollection, a Feature list as
    QuPath exports, or one Feature); Polygon and MultiPolygon geometries, level-0 pixels.

    Raises:
      DataError: not JSON (with the line), not GeoJSON features, a geometry that is not a
        polygon, bad coordinates, or a missing/unknown class, naming the file and feature.
    """
    raw = _read_bytes(path)
    try:
        document = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        line = getattr(error, "lineno", None)
        raise DataError(f"{path}{f' line {line}' if line else ''}: not JSON ({error})") from None
    if isinstance(document, Mapping) and document.get("type") == "FeatureCollection":
        found = document.get("features")
    elif isinstance(document, Mapping) and document.get("type") == "Feature":
        found = [document]
    else:
        found = document
    if not isinstance(found, list):
        raise DataError(f"{path}: not GeoJSON features (expected a FeatureCollection or a list of Features)")
    regions = []
    for index, feature in enumerate(found, 1):
        where = f"{path} feature {index}"
        if not isinstance(feature, Mapping) or not isinstance(feature.get("geometry"), Mapping):
            raise DataError(f"{where}: not a Feature with a geometry")
        geometry = feature["geometry"]
        label = _feature_label(feature.get("properties") or {}, where)
        kind, coordinates = geometry.get("type"), geometry.get("coordinates")
        if kind == "Polygon":
            polygons = [coordinates]
        elif kind == "MultiPolygon":
            polygons = coordinates
        else:
            raise DataError(f"{where}: geometry {kind!r} is not a Polygon or MultiPolygon")
        if not isinstance(polygons, list) or not polygons:
            raise DataError(f"{where}: no coordinates")
        for polygon in polygons:
            if not isinstance(polygon, list) or not polygon:
                raise DataError(f"{where}: a polygon needs an exterior ring")
            regions.append(Region(_ring(polygon[0], where), tuple(_ring(h, where) for h in polygon[1:]), label))
    return regions


def read_patch_labels(path: str) -> List[Region]:
    """Labelled rectangles (`x,y,width,height,label[,...]`, level-0 pixels) as regions.

    Raises:
      DataError: a missing column or a bad value, naming the file and line.
    """
    regions = []
    reader = _csv_rows(path)
    missing = [c for c in ("x", "y", "width", "height", "label") if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path} line 1: missing column(s) {', '.join(missing)} "
                        "(expected x,y,width,height,label[,...])")
    for row in reader:
        where = f"{path} line {reader.line_num}"
        try:
            x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
        except (TypeError, ValueError):
            raise DataError(f"{where}: x, y, width and height must be numbers") from None
        if w <= 0 or h <= 0:
            raise DataError(f"{where}: width and height must be positive")
        label = parse_label(row["label"] or "", where)
        regions.append(Region(np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]), (), label))
    return regions


def read_annotations(path: str) -> List[Region]:
    """Regions of a GeoJSON or labelled-rectangles CSV file (by its name)."""
    return read_patch_labels(path) if path.endswith(PATCH_LABELS_SUFFIX) else read_geojson(path)


class TileLabeller:
    """Labels the tiles of one slide's grid from its regions (see the module docstring).

    Args:
      regions: the slide's annotations (level-0 pixels).
      size0: tile edge in level-0 pixels.
      columns, rows: the grid.
    """

    def __init__(self, regions: Sequence[Region], size0: float, columns: int, rows: int):
        from matplotlib.path import Path

        s = SAMPLES_PER_TILE
        self.size0 = float(size0)
        self.samples = np.full((rows * s, columns * s), -1, np.int8)
        step = self.size0 / s
        for label in (0, 1):  # malignant drawn last: it wins where regions overlap
            for region in (r for r in regions if r.label == label):
                x0, y0 = region.exterior.min(axis=0)
                x1, y1 = region.exterior.max(axis=0)
                i0, i1 = max(0, int(np.floor(y0 / step - 0.5))), min(rows * s, int(np.ceil(y1 / step - 0.5)) + 1)
                j0, j1 = max(0, int(np.floor(x0 / step - 0.5))), min(columns * s, int(np.ceil(x1 / step - 0.5)) + 1)
                if i0 >= i1 or j0 >= j1:
                    continue
                jj, ii = np.meshgrid(np.arange(j0, j1), np.arange(i0, i1))
                points = np.column_stack([(jj.ravel() + 0.5) * step, (ii.ravel() + 0.5) * step])
                inside = Path(region.exterior).contains_points(points)
                for hole in region.holes:
                    inside &= ~Path(hole).contains_points(points)
                block = self.samples[i0:i1, j0:j1].reshape(-1)
                block[inside] = label
                self.samples[i0:i1, j0:j1] = block.reshape(i1 - i0, j1 - j0)

    def label(self, column: int, row: int) -> Optional[int]:
        """The tile's class, or None when annotations cover less than half of it."""
        s = SAMPLES_PER_TILE
        cell = self.samples[row * s:(row + 1) * s, column * s:(column + 1) * s]
        positive, negative = int((cell == 1).sum()), int((cell == 0).sum())
        if positive + negative < MIN_COVERED * cell.size:
            return None
        return int(positive >= negative)


def patients(entries: Iterable[SlideEntry]) -> List[str]:
    """The patient ids of the entries, sorted."""
    return sorted({entry.patient_id for entry in entries})
