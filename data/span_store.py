"""Ingesting the spans of a data root once each, and choosing what a run trains on.

    STORE/<settings>/<span>-<fingerprint>/   one `histopath ingest` output per span
    STORE/<settings>/trained.json            the window the last training used

`<settings>` is a hash of the ingestion settings (data set, seed, split fractions,
magnifications, bag size): records made with other settings are never mixed in. A span is
ingested when no folder for its current fingerprint exists (new, or its files changed);
otherwise its records are reused. The manifests of the ingested spans record every
patient's split: a new span places only the patients none of them holds
(`split.assign_balanced`), so a patient keeps its split across spans, and across settings
of the same data set (`recorded_assignments`).
The store may be a local folder or a URI; each span folder is published whole
(`output_dir.publish`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any, Callable, Mapping, Optional, Sequence

from histopath import fileio
from histopath.data import layouts, spans as spans_lib
from histopath.data.manifest import MANIFEST_NAME, load_manifest
from histopath.data.split import Assignment, check_cohort, merge_split_entries
from histopath.errors import DataError

TRAINED_FILE = "trained.json"
_SETTINGS_FOLDER = re.compile(r"[a-z_]+-[0-9a-f]{12}")  # `IngestSettings.key()`


@dataclasses.dataclass(frozen=True)
class IngestSettings:
    """What makes two ingestions of the same files interchangeable."""

    dataset: str
    splits: Mapping[str, float]
    seed: int
    magnifications: tuple[int, ...] = ()
    bag_size: Optional[int] = None
    tile_um: Optional[float] = None  # slides only: tile edge in microns
    tile_px: Optional[int] = None  # slides only: tile edge as stored, in pixels

    def key(self) -> str:
        """A short hash naming the settings' folder in the store."""
        values = {"dataset": self.dataset, "splits": dict(self.splits), "seed": self.seed,
                  "magnifications": list(self.magnifications), "bag_size": self.bag_size}
        if self.dataset == layouts.SLIDES:  # (images keep the keys of their existing stores)
            values.update(tile_um=self.tile_um, tile_px=self.tile_px)
        text = json.dumps(values, sort_keys=True)
        return f"{self.dataset}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@dataclasses.dataclass(frozen=True)
class IngestedSpan:
    """One span's records in the store.

    Attributes:
      name: the span name.
      fingerprint: `spans.fingerprint` of its files.
      folder: its ingested folder (a `histopath ingest` output).
      manifest: that folder's manifest.
      newly_ingested: ingested by this call (False: reused).
    """

    name: str
    fingerprint: str
    folder: str
    manifest: Mapping[str, Any]
    newly_ingested: bool


def settings_dir(store: str, settings: IngestSettings) -> str:
    return fileio.join(fileio.absolute(store), settings.key())


def read_trained(store: str, settings: IngestSettings) -> Optional[dict[str, str]]:
    """span -> fingerprint of the window the last training used; None before any."""
    path = fileio.join(settings_dir(store, settings), TRAINED_FILE)
    return dict(fileio.read_json(path)["window"]) if fileio.exists(path) else None


def write_trained(folder: str, window: Mapping[str, str]) -> None:
    """Records in a settings folder (`settings_dir`) the window a finished training used
    (span -> fingerprint): the next run's "last trained"."""
    fileio.write_json(fileio.join(folder, TRAINED_FILE), {"window": dict(window)})


def span_patients(span: spans_lib.Span, settings: IngestSettings) -> list[str]:
    """The patients of a span, from its file names (no image is read).

    Raises:
      DataError: the span is empty or not in the data set's layout (naming the span).
    """
    try:
        if settings.dataset == layouts.SLIDES:
            from histopath.data import slide_layout

            return slide_layout.patients(slide_layout.scan_slides(span.folder))
        scan = layouts.scan_source(settings.dataset, span.folder, settings.magnifications or None)
    except DataError as error:
        raise DataError(f"span {span.name}: {error}") from None
    return sorted({f.patient_id for f in scan.files})


def ingest_span(
    span: spans_lib.Span,
    fingerprint: str,
    store: str,
    settings: IngestSettings,
    ingest: Callable[..., dict],
    beam_args: Sequence[str] = (),
    assigned: Optional[Assignment] = None,
) -> IngestedSpan:
    """The span's records: reused from the store, or ingested into it now.

    Args:
      span: the span.
      fingerprint: its current fingerprint.
      store: the span store (local path or URI).
      settings: the ingestion settings.
      ingest: `data.ingest.ingest` (passed in so tests and callers share one code path).
      beam_args: Beam options of the ingestion.
      assigned: the patients placed before (`recorded_assignments`).

    Raises:
      DataError: the span cannot be ingested (the message names it); the store is left
        as it was.
    """
    folder = fileio.join(settings_dir(store, settings), f"{span.name}-{fingerprint}")
    if fileio.exists(fileio.join(folder, MANIFEST_NAME)):
        return IngestedSpan(span.name, fingerprint, folder, load_manifest(folder), False)
    tiling = ({"tile_um": settings.tile_um, "tile_px": settings.tile_px}
              if settings.dataset == layouts.SLIDES else {})
    try:
        manifest = ingest(
            dataset=settings.dataset, source=span.folder, output=folder, splits=dict(settings.splits),
            seed=settings.seed, magnifications=settings.magnifications or None, beam_args=beam_args,
            bag_size=settings.bag_size, overwrite=True, require_every_split=False, assigned=assigned, **tiling,
        )
    except DataError as error:
        raise DataError(f"span {span.name}: {error}") from None
    return IngestedSpan(span.name, fingerprint, folder, manifest, True)


def window_splits(ingested: Sequence[IngestedSpan]) -> dict[str, dict]:
    """Per split over the window's spans: patients with their labels and image counts
    (`split.merge_split_entries`); `split.balance` of it says how balanced each split is."""
    names = []
    for span in ingested:
        names += [name for name in span.manifest["splits"] if name not in names]
    return {name: merge_split_entries([span.manifest["splits"][name] for span in ingested
                                       if name in span.manifest["splits"]]) for name in names}


def manifest_assignments(manifest: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """The patients one ingested span placed: patient -> (split, class)."""
    return {patient: (split, int(label)) for split, entry in manifest["splits"].items()
            for patient, label in entry.get("patient_labels", {}).items()}


def recorded_assignments(store: str, settings: IngestSettings) -> dict[str, tuple[str, int]]:
    """Every patient the store's spans of this data set placed: patient -> (split, class),
    from their manifests.

    The folder of the current settings is read first, then the data set's folders of other
    settings (other magnifications, bag size, tiling, seed or fractions), so a patient keeps
    its split when the settings change: a test patient never moves into training. A split
    the current settings do not have is not carried over.
    """
    root = fileio.absolute(store)
    current = settings.key()
    names = [name.rstrip("/") for name in fileio.listdir(root)] if fileio.exists(root) else []
    others = sorted(name for name in names if name != current and _SETTINGS_FOLDER.fullmatch(name)
                    and name.rsplit("-", 1)[0] == settings.dataset)
    assigned: dict[str, tuple[str, int]] = {}
    for key in [current, *others]:
        folder = fileio.join(root, key)
        if not fileio.exists(folder):
            continue
        for name in sorted(fileio.listdir(folder)):
            if fileio.exists(fileio.join(folder, name, MANIFEST_NAME)):
                for patient, placed in manifest_assignments(load_manifest(fileio.join(folder, name))).items():
                    if placed[0] in settings.splits:
                        assigned.setdefault(patient, placed)
    return assigned


def check_splits(window: Mapping[str, dict], splits: Mapping[str, float]) -> None:
    """Refuses a training window too small to train and evaluate (`split.check_cohort`)."""
    check_cohort({name: window.get(name, {}) for name in splits}, splits, "the training window")
