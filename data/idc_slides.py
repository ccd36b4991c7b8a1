"""Re-assembles IDC patients into whole slides with per-patch ground truth.

Each IDC patch name carries its offset in the patient's slide
(`<patient>_idx5_x<X>_y<Y>_class<C>.png`, offsets counted from 1 on a 50 px grid), so the
patches of one patient are pasted back where they were cut, on white glass, and written as
a pyramidal tiled TIFF (`histopath.slide_writer`) with the microns per pixel in its
resolution tags: IDC was cut from 40x scans downsampled 16:1, about 4 µm/px.

Per patient, under OUTPUT:
- `<patient>.tif`: the slide (tiled JPEG, or deflate with `lossless`);
- `<patient>.labels.csv`: `x,y,width,height,label,file` per patch, level-0 pixels of the slide;
and for the whole run `slides.csv` (`slide,patient,label`: 1 when any patch is IDC-positive),
the slide-label layout a lab's own slides come with.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from histopath import fileio, images, slide_writer
from histopath.data import layouts
from histopath.errors import DataError

IDC_MPP = 4.0  # µm/px of the IDC patches: ~0.25 µm/px at 40x, downsampled 16:1
IDC_PATCH_PX = 50
LABEL_FIELDS = ("x", "y", "width", "height", "label", "file")


@dataclasses.dataclass(frozen=True)
class PatchLabel:
    """One patch of a re-assembled slide, in level-0 pixels of the slide."""

    x: int
    y: int
    width: int
    height: int
    label: int
    file: str


def _patient_patches(patient_dir: str) -> List[tuple[str, int, int, int]]:
    """(path, x, y, label) of a patient's patches, offsets made 0-based."""
    found = []
    for path in layouts.walk_files(patient_dir):
        if not path.lower().endswith(".png"):
            continue
        try:
            parsed = layouts.parse_idc_path(os.path.relpath(path, os.path.dirname(patient_dir)))
        except layouts.LayoutNameError as error:
            raise DataError(f"{path}: not an IDC patch ({error})") from None
        found.append((path, parsed.patch_x - 1, parsed.patch_y - 1, parsed.label))
    return found


def _write_labels(path: str, labels: Sequence[PatchLabel]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LABEL_FIELDS, lineterminator="\n")
    writer.writeheader()
    for label in labels:
        writer.writerow(dataclasses.asdict(label))
    fileio.write_text(path, buffer.getvalue())


def reassemble_patient(patient_dir: str, output_dir: str, mpp: float = IDC_MPP,
                       compression: str = "jpeg") -> Dict[str, object]:
    """Writes one patient's slide and patch labels.

    Args:
      patient_dir: `<idc>/<patient>` holding `<class>/<patient>_idx5_x<X>_y<Y>_class<C>.png`.
      output_dir: an existing folder.
      mpp: microns per pixel written into the slide.
      compression: "jpeg" or "lossless".

    Returns:
      {"slide", "labels", "patient", "label", "patches", "positive", "width", "height", "skipped"}.

    Raises:
      DataError: no patches, or a file that is not an IDC patch.
    """
    patient = os.path.basename(os.path.normpath(patient_dir))
    patches = _patient_patches(patient_dir)
    if not patches:
        raise DataError(f"{patient_dir}: no IDC patches (<class>/<patient>_idx5_x<X>_y<Y>_class<C>.png)")
    width = max(x for _, x, _, _ in patches) + IDC_PATCH_PX
    height = max(y for _, _, y, _ in patches) + IDC_PATCH_PX
    canvas = np.full((height, width, 3), 255, np.uint8)
    labels, skipped = [], []
    for path, x, y, label in sorted(patches, key=lambda p: (p[2], p[1])):
        try:
            with open(path, "rb") as stream:
                rgb = np.asarray(images.decode(stream.read()).rgb)
        except (OSError, images.ImageError) as error:
            skipped.append({"file": path, "reason": str(error)})
            continue
        h, w = min(rgb.shape[0], height - y), min(rgb.shape[1], width - x)
        canvas[y:y + h, x:x + w] = rgb[:h, :w]
        labels.append(PatchLabel(x, y, w, h, label, os.path.basename(path)))
    slide_path = os.path.join(output_dir, f"{patient}.tif")
    labels_path = os.path.join(output_dir, f"{patient}.labels.csv")
    slide_writer.write_pyramid(slide_path, width, height, slide_writer.array_region(canvas), mpp,
                               compression=compression, description=f"IDC patient {patient} re-assembled")
    _write_labels(labels_path, labels)
    positive = sum(label.label for label in labels)
    return {"slide": slide_path, "labels": labels_path, "patient": patient, "label": int(positive > 0),
            "patches": len(labels), "positive": positive, "width": width, "height": height, "skipped": skipped}


def reassemble(source: str, output: str, patients: Optional[Iterable[str]] = None, mpp: float = IDC_MPP,
               compression: str = "jpeg") -> List[Dict[str, object]]:
    """Re-assembles every (or the named) patient of an IDC folder into `output`.

    Returns:
      One `reassemble_patient` summary per patient, sorted by patient id.

    Raises:
      DataError: `source` is not a folder, a named patient is missing, or no patient found.
    """
    if not os.path.isdir(source):
        raise DataError(f"{source}: not a folder")
    available = sorted(name for name in os.listdir(source)
                       if name.isdigit() and os.path.isdir(os.path.join(source, name)))
    wanted = sorted(set(patients)) if patients else available
    missing = [p for p in wanted if p not in available]
    if missing:
        raise DataError(f"{source}: no patient folder {', '.join(missing)}")
    if not wanted:
        raise DataError(f"{source}: no IDC patient folders (<patient>/<class>/...png)")
    os.makedirs(output, exist_ok=True)
    summaries = [reassemble_patient(os.path.join(source, p), output, mpp, compression) for p in wanted]
    rows = "".join(f"{os.path.basename(str(s['slide']))},{s['patient']},{s['label']}\n" for s in summaries)
    fileio.write_text(os.path.join(output, "slides.csv"), "slide,patient,label\n" + rows)
    return summaries


def read_labels(path: str) -> List[PatchLabel]:
    """The patch labels written beside a re-assembled slide.

    Raises:
      DataError: unreadable or without the expected columns.
    """
    try:
        with open(path, newline="") as stream:
            rows = list(csv.DictReader(stream))
        return [PatchLabel(int(r["x"]), int(r["y"]), int(r["width"]), int(r["height"]), int(r["label"]), r["file"])
                for r in rows]
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise DataError(f"{path}: cannot read patch labels ({error})") from None


def labels_by_position(labels: Sequence[PatchLabel]) -> Dict[tuple[int, int], int]:
    """{(x, y): label} of the patches, by their level-0 top-left corners."""
    return {(label.x, label.y): label.label for label in labels}
