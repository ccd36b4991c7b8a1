"""`histopath evaluate --dataset slides`: a model scored on a slide folder, tile by tile and
slide by slide, with patient-bootstrap intervals.

Every slide of the folder (`data.slide_layout`: `slides.csv` or a folder per label) is
called exactly as `histopath predict` calls it (`slide_predict.predict_slide`: the model's
scale, QC, its slide aggregation), its outputs kept under `<report stem>.slides/`. Then:

- **tile level**: each called tile of an annotated slide (GeoJSON regions, or the labelled
  rectangles `histopath idc-slides` writes) is labelled as ingestion labels it (the class
  covering most of the tile; tiles covered less than half left out) and scored against
  its probability at the model's tile threshold; slides without annotations have no tile
  labels and count at the slide level only;
- **slide level**: each slide's label (from the labels file) against its answer.

Both levels' metrics (`evaluation.bootstrap`: AUC, accuracy, balanced accuracy,
sensitivity, specificity, F1, Brier) carry 95 % intervals from one patient bootstrap:
patients are resampled with replacement, all their tiles and slides kept.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from histopath import fileio
from histopath.data import slide_layout
from histopath.data.features import patient_sort_key
from histopath.errors import ConfigError, DataError
from histopath.evaluation import bootstrap as patient_bootstrap
from histopath.evaluation import metrics
from histopath.evaluation.evaluate import requested_patients


def _tile_labels(entry: slide_layout.SlideEntry, data_dir: str, answer: Dict[str, Any],
                 tiles: Sequence[Dict[str, Any]], scale) -> List[Optional[int]]:
    """Each called tile's label from the slide's annotations (None: not labelled)."""
    if not entry.annotations:
        return [None] * len(tiles)
    regions = slide_layout.read_annotations(os.path.join(data_dir, entry.annotations))
    size0 = scale.tile_um / float(answer["mpp"])
    columns, rows = int(answer["width"] // size0), int(answer["height"] // size0)
    labeller = slide_layout.TileLabeller(regions, size0, columns, rows)
    return [labeller.label(int(t["column"]), int(t["row"])) for t in tiles]


def _level(labels: np.ndarray, scores: np.ndarray, predictions: np.ndarray, clusters: np.ndarray,
           n_patients: int, weights: np.ndarray, unit: str) -> Dict[str, Any]:
    """One level's counts, metrics with intervals, confusion matrix and calibration."""
    if not len(labels):
        return {"n_items": 0, "unit": unit, "metrics": None,
                "reason": f"no {unit} with a label (slides need annotations for tile labels)"}
    return {
        "unit": unit, "n_items": int(len(labels)), "n_patients": int(len(set(clusters.tolist()))),
        "label_counts": {"benign": int((labels == 0).sum()), "malignant": int((labels == 1).sum())},
        "metrics": patient_bootstrap.cluster_bootstrap_metrics(labels, scores, predictions, clusters, n_patients,
                                                               weights),
        "confusion_matrix": metrics.confusion_matrix(labels, predictions),
        "calibration": metrics.calibration_table(labels, scores),
    }


def _call_slide(loaded: Any, entry: Any, data_dir: str, slides_dir: str, scale: Any, mpp: Optional[float],
                batch_size: int) -> tuple[Dict[str, Any], List[tuple[int, float]]]:
    """Calls one slide (`slide_predict.predict_slide`); its report row and its labelled
    tiles' (label, probability).

    Raises:
      DataError, ConfigError: the slide or its labels cannot be read.
    """
    from histopath.evaluation import slide_predict

    answer = slide_predict.predict_slide(loaded, os.path.join(data_dir, entry.relative_path), slides_dir, mpp=mpp,
                                         scale=scale, batch_size=batch_size)
    tiles = fileio.read_json(answer["outputs"]["slide.json"])["tiles"]
    labels = _tile_labels(entry, data_dir, answer, tiles, scale)
    labelled = [(label, t["probability"]) for label, t in zip(labels, tiles) if label is not None]
    row = {"slide_id": entry.slide_id, "slide": entry.relative_path, "patient": entry.patient_id,
           "label": entry.label, "probability": answer["probability"], "predicted": answer["label"],
           "tiles_called": answer["tiles_called"], "tiles_labelled": len(labelled),
           "tile_auc": metrics.roc_auc([label for label, _ in labelled], [p for _, p in labelled]) if labelled else None,
           "qc": answer["qc"], "seconds": answer["seconds"], "outputs": answer["outputs"]}
    return row, labelled


def evaluate_slides(model_dir: str, data_dir: str, output: str, *, patients: Optional[Sequence[str]] = None,
                    bootstrap: int = 1000, seed: int = 0, batch_size: int = 64, mpp: Optional[float] = None,
                    model_mpp: Optional[float] = None, tile_px: Optional[int] = None) -> Dict[str, Any]:
    """Calls and scores every (or the named patients') slide of a slide folder.

    Args:
      model_dir: an exported model (or a folder of versions).
      data_dir: the slide folder.
      output: the report's JSON path; slide outputs go to `<output without .json>.slides/`.
      patients: only these patients' slides (e.g. a manifest's test split).
      bootstrap: patient-bootstrap resamples (0: no intervals).
      seed: seed of the bootstrap.
      batch_size: tiles per model call.
      mpp: microns per pixel of slides whose file does not say.
      model_mpp, tile_px: the model's scale when model_info does not say it.

    Returns:
      {"model", "data", "scale", "aggregation", "bootstrap", "tile_level", "slide_level",
      "slides" (one row each), "failed_slides", "seconds"}.

    Raises:
      DataError: a bad slide folder or labels file; no slide of the requested patients.
      ConfigError: negative bootstrap, or a model whose scale is unknown.
    """
    from histopath.evaluation import slide_predict
    from histopath.evaluation.slide_calling import model_aggregation
    from histopath.models import exported

    if bootstrap < 0:
        raise ConfigError(f"bootstrap resamples must be >= 0, got {bootstrap}")
    started = time.monotonic()
    entries, missing = requested_patients(slide_layout.scan_slides(data_dir), patients, data_dir, "a slide")
    loaded = exported.load(model_dir)
    info = loaded.model_info
    scale = slide_predict.model_scale(info, model_mpp, tile_px)
    tile_threshold = float(info.get("decision_threshold", 0.5))
    aggregation = model_aggregation(info)
    slides_dir = os.path.splitext(os.fspath(output))[0] + ".slides"
    rows, failed, tile_rows = [], [], []
    for entry in entries:
        try:
            row, labelled = _call_slide(loaded, entry, data_dir, slides_dir, scale, mpp, batch_size)
        except (DataError, ConfigError) as error:
            failed.append({"slide": entry.relative_path, "patient": entry.patient_id, "error": str(error)})
            continue
        rows.append(row)
        tile_rows += [(entry.patient_id, label, probability) for label, probability in labelled]
    names = sorted({e.patient_id for e in entries}, key=patient_sort_key)
    return {
        "model": {**exported.describe(loaded), "model_dir": os.path.abspath(model_dir) if not fileio.is_uri(
            model_dir) else model_dir},
        "data": {"data_dir": data_dir, "dataset": "slides", "slides": len(entries), "patients": len(names),
                 "patients_not_found": missing},
        "scale": {"tile_um": scale.tile_um, "tile_px": scale.tile_px, "source": scale.source},
        "tile_threshold": tile_threshold,
        "aggregation": {"name": aggregation.name, "parameter": aggregation.parameter,
                        "describe": aggregation.describe(), "threshold": aggregation.threshold,
                        "source": aggregation.source},
        "bootstrap": {"method": "cluster (patient) percentile bootstrap: patients resampled with replacement, "
                                "all their tiles and slides kept", "resamples": int(bootstrap), "seed": int(seed),
                      "confidence": patient_bootstrap.CONFIDENCE},
        **_scored_levels(rows, tile_rows, names, tile_threshold, bootstrap, seed),
        "slides": rows,
        "slides_without_tissue": [r["slide"] for r in rows if r["probability"] is None],
        "failed_slides": failed,
        "seconds": round(time.monotonic() - started, 1),
    }


def _scored_levels(rows: Sequence[Dict[str, Any]], tile_rows: Sequence[tuple], patients: Sequence[str],
                   tile_threshold: float, bootstrap: int, seed: int) -> Dict[str, Any]:
    """{"tile_level", "slide_level"}: the labelled tiles (`(patient, label, probability)`)
    and the answered slides scored with one shared patient bootstrap."""
    answered = [r for r in rows if r["probability"] is not None]
    index = {p: i for i, p in enumerate(patients)}
    weights = patient_bootstrap.patient_bootstrap_weights(len(patients), bootstrap, seed)
    tile_labels = np.array([r[1] for r in tile_rows], int)
    tile_scores = np.array([r[2] for r in tile_rows], np.float64)
    slide_labels = np.array([r["label"] for r in answered], int)
    slide_scores = np.array([r["probability"] for r in answered], np.float64)
    return {
        "tile_level": _level(tile_labels, tile_scores, (tile_scores >= tile_threshold).astype(int),
                             np.array([index[r[0]] for r in tile_rows], int), len(patients), weights, "tiles"),
        "slide_level": _level(slide_labels, slide_scores, np.array([r["predicted"] for r in answered], int),
                              np.array([index[r["patient"]] for r in answered], int), len(patients), weights,
                              "slides"),
    }


def summary_lines(result: Dict[str, Any]) -> List[str]:
    """A few lines for the terminal: both levels' AUC and balanced accuracy with intervals."""
    lines = []
    for key in ("tile_level", "slide_level"):
        level = result[key]
        if not level.get("metrics"):
            lines.append(f"{key.replace('_', ' ')}: {level['reason']}")
            continue
        parts = []
        for name in ("auc", "balanced_accuracy", "sensitivity", "specificity"):
            entry = level["metrics"][name]
            if entry["value"] is None:
                parts.append(f"{name} n/a")
            elif entry["ci_low"] is None:
                parts.append(f"{name} {entry['value']:.3f}")
            else:
                parts.append(f"{name} {entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]")
        lines.append(f"{key.replace('_', ' ')} ({level['n_items']} {level['unit']}, {level['n_patients']} patients): "
                     + ", ".join(parts))
    return lines
