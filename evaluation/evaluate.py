"""`histopath evaluate`: a pushed model run on a data folder and scored (`scoring`), the
result written as JSON with its ROC and calibration plots, and a summary for the terminal.
"""

from __future__ import annotations

import datetime
import os
import pathlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from histopath import fileio
from histopath.data.features import patient_sort_key
from histopath.errors import ConfigError, DataError
from histopath.evaluation import bootstrap, metrics
from histopath.evaluation.scoring import score_predictions, slide_context_evaluation, tumour_fraction_evaluation

# IDC: every slide holds tumour, so "malignant patient" says nothing; the slide-level
# answer is how much of the slide is tumour (`tumour_fraction_evaluation`).
IDC_PATIENT_LEVEL = ("not reported for IDC: every slide has IDC-positive patches, so a patient label says "
                     "nothing; see \"tumour_fraction\" for the slide-level answer")


def evaluate_model(
    model_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    dataset: str,
    *,
    patients: Optional[Sequence[str]] = None,
    bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    progress: Optional[Callable[..., Any]] = None,
) -> Dict[str, Any]:
    """Predicts every image of a data folder with a pushed model and scores it.

    Args:
      model_dir: `<name>/<version>` or `<name>` (newest version).
      data_dir: a folder in the real BreakHis or IDC layout (labels and patients come from
        the file names, `data.layouts.scan_source`).
      dataset: "breakhis" or "idc".
      patients: evaluate only these patients (e.g. a manifest's test split); None = all.
      bootstrap: patient-bootstrap resamples for the 95 % intervals (0 = none).
      seed: seed of the resampling.
      batch_size: images per call of the serving signature.
      progress: optional tqdm-like factory (`progress(total=N)` with `update(n)`, `close()`).

    Returns:
      The evaluation (JSON-serialisable): "model", "data", "decision_threshold", the
      `score_predictions` blocks, "images", "failed_images", "abstention" and, for a model
      with a slide-context setting on IDC data, "slide_context".

    Raises:
      DataError: no model, data folder missing / wrong layout, none of the requested
        patients present, or no image could be predicted.
      ConfigError: unknown dataset or invalid arguments.
    """
    from histopath import __version__
    from histopath.data import layouts
    from histopath.models import exported

    if bootstrap < 0:
        raise ConfigError(f"bootstrap resamples must be >= 0, got {bootstrap}")
    data_dir = os.path.abspath(os.fspath(data_dir))
    scan = layouts.scan_source(dataset, data_dir)
    files, missing = requested_patients(scan.files, patients, data_dir)

    loaded = exported.load(model_dir)
    model = exported.describe(loaded)
    threshold = float(loaded.model_info.get("decision_threshold", 0.5))
    outcomes = _predict_all(loaded, [os.path.join(data_dir, f.relative_path) for f in files], batch_size, progress)
    kept, failed = _kept_and_failed(files, outcomes)
    if not kept:
        raise DataError(f"no image of {data_dir} could be predicted (e.g. {failed[0]['error']})")

    labels = [f.label for f, _ in kept]
    scores = [row["probability"] for _, row in kept]
    patient_ids = [f.patient_id for f, _ in kept]
    scored = score_predictions(
        labels=labels, scores=scores,
        predictions=[row["label"] for _, row in kept],  # the model's `label`
        patient_ids=patient_ids, threshold=threshold, bootstrap=bootstrap, seed=seed,
    )
    context = slide_context_evaluation(
        loaded.model_info.get("slide_context"), labels, scores, patient_ids,
        [f.patch_x for f, _ in kept], [f.patch_y for f, _ in kept], bootstrap=bootstrap, seed=seed)
    if dataset == "idc":
        _idc_levels(scored, context, labels, [row["label"] for _, row in kept], patient_ids, bootstrap, seed)
    abstained = coverage_evaluation(loaded.model_info, labels, scores, patient_ids, threshold)
    return {
        "histopath_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {**model, "info": loaded.model_info},
        "data": _data_block(dataset, data_dir, patients, missing, scan),
        "decision_threshold": threshold,
        **scored,
        "images": _image_rows(kept, context),
        "failed_images": failed,
        "abstention": abstained,
        **({} if context is None else {"slide_context": context.report}),
    }


def _kept_and_failed(files: List[Any], outcomes: List[Any]) -> tuple[list, list]:
    """(file, prediction) of the images classified, and {"path", "error"} of the rest (an
    error, or no tissue detected)."""
    from histopath.models import exported

    failed = [{"path": f.relative_path, "error": o.error} for f, o in zip(files, outcomes) if o.error]
    failed += [{"path": f.relative_path, "error": f"{f.relative_path}: {exported.NO_TISSUE}"}
               for f, o in zip(files, outcomes) if not o.error and not o.prediction.get(exported.TISSUE_DETECTED, True)]
    kept = [(f, o.prediction) for f, o in zip(files, outcomes)
            if not o.error and o.prediction.get(exported.TISSUE_DETECTED, True)]
    return kept, failed


def _image_rows(kept: list, context: Any) -> List[Dict[str, Any]]:
    """One row per classified image (with its slide-context probability when there is one)."""
    from histopath.models import exported

    return [{"path": f.relative_path, "patient_id": f.patient_id, "label": int(f.label),
             "probability": float(row["probability"]), "prediction": int(row["label"]),
             "not_sure": int(row.get(exported.NOT_SURE, False)),
             **({"uncertainty": float(row[exported.UNCERTAINTY])} if exported.UNCERTAINTY in row else {}),
             **({} if context is None else {"context_probability": float(context.scores[index])})}
            for index, (f, row) in enumerate(kept)]


def requested_patients(items: List[Any], patients: Optional[Sequence[str]], data_dir: str,
                       what: str = "an image") -> tuple[List[Any], List[str]]:
    """The items (images, slides: anything with a `patient_id`) of the requested patients
    (all when None), and the requested patients not found.

    Raises:
      DataError: none of the requested patients has `what` in `data_dir`.
    """
    if patients is None:
        return items, []
    wanted = {str(p) for p in patients}
    missing = sorted(wanted - {item.patient_id for item in items}, key=patient_sort_key)
    items = [item for item in items if item.patient_id in wanted]
    if not items:
        raise DataError(f"none of the {len(wanted)} requested patients has {what} in {data_dir}")
    return items, missing


def _idc_levels(scored: Dict[str, Any], context: Any, labels: Sequence[int], predictions: Sequence[int],
                patient_ids: Sequence[str], bootstrap: int, seed: int) -> None:
    """IDC: no patient level (every slide holds tumour); the tumour fraction per slide
    instead, called vs labelled, also with slide context."""
    scored["patient_level"] = {"reported": False, "reason": IDC_PATIENT_LEVEL}
    scored["tumour_fraction"] = tumour_fraction_evaluation(labels, predictions, patient_ids,
                                                           bootstrap=bootstrap, seed=seed)
    if context is not None:
        context.report["patient_level"] = scored["patient_level"]
        context.report["tumour_fraction"] = tumour_fraction_evaluation(
            labels, (context.scores >= context.report["decision_threshold"]).astype(int), patient_ids,
            bootstrap=bootstrap, seed=seed)


def _predict_all(loaded: Any, paths: Sequence[str], batch_size: int,
                 progress: Optional[Callable[..., Any]]) -> List[Any]:
    """`predict.predict_files` over every path, with an optional progress bar."""
    from histopath.evaluation import predict

    bar = progress(total=len(paths)) if progress else None
    outcomes = []
    try:
        for outcome in predict.predict_files(loaded, paths, batch_size):
            outcomes.append(outcome)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return outcomes


def _data_block(dataset: str, data_dir: str, patients: Optional[Sequence[str]], missing: List[str],
                scan: Any) -> Dict[str, Any]:
    """What was evaluated: the folder, the patients asked for and not found, what the layout skipped."""
    return {
        "dataset": dataset,
        "data_dir": data_dir,
        "patients_requested": None if patients is None else len(set(map(str, patients))),
        "patients_not_found": missing,
        "files_scanned": len(scan.files) + len(scan.skipped),
        "files_skipped_by_layout": len(scan.skipped),
        "skipped_examples": [{"path": s.path, "reason": s.reason} for s in scan.skipped[:20]],
    }


def coverage_evaluation(model_info: Mapping[str, Any], labels: Sequence[int], scores: Sequence[float],
                        patient_ids: Sequence[str], threshold: float) -> Dict[str, Any]:
    """Accuracy against coverage on the evaluated images (`models.abstention`), and the
    operating point of the model's own "not sure" band (`model_info["abstention"]`).

    Returns:
      {"low", "high" (None: the model has no band), "chosen_on" (where the band was chosen),
      "coverage", "balanced_accuracy", "patient_coverage", "patient_balanced_accuracy" (at
      the band, on these images), "target_balanced_accuracy", "min_coverage", "curve"}.
    """
    from histopath.models import abstention

    stored = model_info.get("abstention") or {}
    band = abstention.band_of(stored)
    return {"low": band and band["low"], "high": band and band["high"], "chosen_on": stored.get("chosen_on"),
            "target_balanced_accuracy": stored.get("target_balanced_accuracy"),
            "min_coverage": stored.get("min_coverage"),
            **abstention.operating_point(labels, scores, patient_ids, threshold, band),
            "curve": abstention.coverage_curve(labels, scores, patient_ids, threshold)}


def plot_paths(json_path: str | os.PathLike) -> Dict[str, pathlib.Path]:
    """Where `write_evaluation` puts the plots: `X.json` -> `X.roc.png`, `X.calibration.png`,
    `X.coverage.png`."""
    path = pathlib.Path(json_path)
    stem = path.name[:-5] if path.name.lower().endswith(".json") else path.name
    return {"roc": path.with_name(f"{stem}.roc.png"), "calibration": path.with_name(f"{stem}.calibration.png"),
            "coverage": path.with_name(f"{stem}.coverage.png")}


def write_evaluation(result: Mapping[str, Any], path: str | os.PathLike) -> Dict[str, pathlib.Path]:
    """Writes the evaluation JSON and its ROC and calibration plots (temp name, then rename).

    Args:
      result: from `evaluate_model`.
      path: the JSON file; plots go next to it (see `plot_paths`).

    Returns:
      {"json", "roc", "calibration", "coverage"} paths written.
    """
    from histopath.evaluation import plots

    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = plot_paths(path)
    images, patients = result["images"], result["patients"]
    curves = {}
    for name, labels, scores, level in (
        ("images", [i["label"] for i in images], [i["probability"] for i in images], "image_level"),
        ("patients", [p["label"] for p in patients], [p["score"] for p in patients], "patient_level"),
    ):
        if not result[level].get("reported", True):
            continue
        fpr, tpr, _ = metrics.roc_curve(labels, scores)
        auc = result[level]["metrics"]["auc"]
        curves[name] = plots.RocCurve(fpr, tpr, auc["value"], auc["ci_low"], auc["ci_high"],
                                      n_items=len(labels))
    if "slide_context" in result:
        labels = [i["label"] for i in images]
        fpr, tpr, _ = metrics.roc_curve(labels, [i["context_probability"] for i in images])
        auc = result["slide_context"]["image_level"]["metrics"]["auc"]
        curves["images, slide context"] = plots.RocCurve(fpr, tpr, auc["value"], auc["ci_low"], auc["ci_high"],
                                                         n_items=len(labels))
    model = result["model"]
    title = f"{model['model_name']} v{model['model_version']} on {result['data']['dataset']}"
    plots.plot_roc(curves, targets["roc"], title=title)
    calibrations = {"images": result["image_level"]["calibration"]}
    if result["patient_level"].get("reported", True):
        calibrations["patients"] = result["patient_level"]["calibration"]
    plots.plot_calibration(calibrations, targets["calibration"], title=title)
    levels = ("images", "patients") if result["patient_level"].get("reported", True) else ("images",)
    plots.plot_coverage(plots.coverage_curves(result["abstention"], levels), targets["coverage"], title=title,
                        target=result["abstention"].get("target_balanced_accuracy"))
    document = dict(result)
    document["plots"] = {key: str(value) for key, value in targets.items()}
    fileio.write_json(path, document, sort_keys=False, allow_nan=False)
    return {"json": path, **targets}


SUMMARY_PATIENTS = 30  # per-patient lines `summary_lines` prints; the JSON has them all


def _with_interval(entry: Mapping[str, Any]) -> str:
    interval = f" [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]" if entry.get("ci_low") is not None else ""
    return f"{entry['value']:.3f}{interval}"


def _coverage_lines(block: Optional[Mapping[str, Any]]) -> List[str]:
    """The "not sure" operating point and the accuracy-against-coverage curve, for the terminal."""
    if not block:
        return []

    def number(value: Optional[float]) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    if block["low"] is None:
        lines = ["not sure: the model has no band (it answers every image)"]
    else:
        lines = [f"not sure: band [{block['low']:.3f}, {block['high']:.3f}] (chosen on {block['chosen_on']}): "
                 f"coverage {number(block['coverage'])}, balanced accuracy answered "
                 f"{number(block['balanced_accuracy'])}; patients: coverage {number(block['patient_coverage'])}, "
                 f"balanced accuracy answered {number(block['patient_balanced_accuracy'])}"]
    lines.append("  accuracy against coverage (images): " + ", ".join(
        f"{point['coverage']:.2f} -> {number(point['balanced_accuracy'])}" for point in block["curve"]))
    return lines


def summary_lines(result: Mapping[str, Any]) -> List[str]:
    """A human-readable table of the metrics with their intervals."""
    lines = []
    levels = [(level.replace("_", " "), result[level]) for level in ("image_level", "patient_level")
              if result[level].get("reported", True)]
    if "slide_context" in result:
        context = result["slide_context"]
        levels.append((f"image level with slide context (sigma {context['sigma']:g} patches, "
                       f"threshold {context['decision_threshold']:.3f})", context["image_level"]))
    for title, block in levels:
        lines.append(f"{title}: {block['n_items']} "
                     f"({block['label_counts']['benign']} benign, {block['label_counts']['malignant']} malignant)")
        for name in bootstrap.METRIC_NAMES:
            metric = block["metrics"][name]
            if metric["value"] is None:
                lines.append(f"  {name:18s} n/a ({metric['reason']})")
                continue
            lines.append(f"  {name:18s} {_with_interval(metric)}")
        cm = block["confusion_matrix"]
        lines.append(f"  confusion          TN={cm['tn']} FP={cm['fp']} FN={cm['fn']} TP={cm['tp']}")
        hindsight = block.get("balanced_accuracy_in_hindsight", {})
        if hindsight.get("value") is not None:
            lines.append(f"  in hindsight       balanced accuracy {hindsight['value']:.3f} at threshold "
                         f"{hindsight['threshold']:.3f}, chosen on these labels (a bound, not an operating point)")
    lines.extend(_coverage_lines(result.get("abstention")))
    for title, block in (("slide level", result.get("tumour_fraction")),
                         ("slide level with slide context", result.get("slide_context", {}).get("tumour_fraction"))):
        if block:
            lines.append(f"{title}: tumour fraction called vs labelled, over {len(block['patients'])} patients: "
                         f"mean absolute error {_with_interval(block['mean_absolute_error'])}, bias "
                         f"{_with_interval(block['bias'])}, Spearman "
                         + ("n/a" if block["spearman"] is None else f"{block['spearman']:.3f}"))
            for row in block["patients"][:SUMMARY_PATIENTS]:
                lines.append(f"  {row['patient_id']:18s} {row['n_patches']} patches: {row['predicted_fraction']:.1%} "
                             f"called IDC, {row['labelled_fraction']:.1%} labelled")
    patients = result.get("patients", [])
    if patients:
        lines.append("per patient, its own images (AUC, sensitivity, specificity at the threshold):")

        def number(value: Optional[float]) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        for row in patients[:SUMMARY_PATIENTS]:
            lines.append(f"  {row['patient_id']:18s} {row['n_images']} images ({row['n_malignant_images']} malignant)"
                         f"  AUC {number(row['image_auc'])}  sensitivity {number(row.get('image_sensitivity'))}"
                         f"  specificity {number(row.get('image_specificity'))}")
        if len(patients) > SUMMARY_PATIENTS:
            lines.append(f"  ... {len(patients) - SUMMARY_PATIENTS} more in the JSON's \"patients\"")
    return lines
