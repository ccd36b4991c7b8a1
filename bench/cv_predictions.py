"""Cross-validated predictions of the pipeline's candidates, one per image of every patient.

    python -m bench.cv_predictions --data DIR --dataset breakhis [--preset breakhis]
                                   [--config FILE.json] [--folds 5] [--refit]
                                   [--output FILE.json] [--cache DIR]

Every patient is held out once, exactly as a Trainer with `selection.folds` does it
(`models.cross_validation`): label-stratified patient folds; per fold, each candidate
of the preset trained with the Trainer's loop and settings, an inner eval split of the
remaining patients watched, the held-out patients predicted as the exported model
predicts. Each candidate also gets a held-out estimate: its cross-validated predictions
scored with patient-bootstrap intervals, each fold at the balanced-accuracy threshold of
the OTHER folds' predictions (so no threshold is chosen on what it is scored on), and, for
a preset with `slide_context_sigma` on IDC, the same after slide context (its scores are
the "context_probability" column). With `--refit`, each fold also trains the
`refit_on_all` model (all remaining patients, the epochs the fold kept, no early stopping)
and predicts the held-out patients with it. Images are read from the raw folder and
preprocessed by the pipeline's own `preprocessing_fn`; a preset with `bag_size`
(`idc-mil`) gets the region mosaics ingest makes of them. `bench/selection_rules.py`
scores selection rules on the output (`bench/region_candidates.py` first puts the two IDC
presets on regions).

`--config` layers a configuration file over the preset, as `histopath run --config` does
(e.g. `{"models": ["mil"], "model_training": {"mil": {"early_stopping_start_epoch": 6}}}`
to cross-validate one setting of one candidate).

Each fold is cached under `--cache` (keyed by the candidate's settings and the fold), so an
interrupted study resumes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any, Dict, List, Optional

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np

from bench.common import cached_json, content_key, write_json
from bench.study.tables import with_interval

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _as_stored(encoded: List[bytes], image_size: int, stain_normalization: Any) -> np.ndarray:
    """Encoded images as Transform stores them (`preprocessing_fn`), uint8 `[n, s, s, 3]`."""
    import tensorflow as tf

    from histopath.data import features
    from histopath.models import image_ops, preprocessing, stain_methods

    settings = {"image_size": image_size, "stain_normalization": stain_methods.method_name(stain_normalization)}
    images = []
    for start in range(0, len(encoded), 64):
        raw = {features.IMAGE: tf.constant(encoded[start:start + 64])}
        stored = preprocessing.preprocessing_fn(raw, settings)[preprocessing.TRANSFORMED_IMAGE]
        floats = image_ops.dequantize_from_bytes(stored, image_size)
        images.append(np.round(floats.numpy() * 255.0).astype(np.uint8))
    return np.concatenate(images)


def load_raw(dataset: str, source: str, image_size: int, stain_normalization: Any,
             bag_size: Optional[int] = None):
    """Every image under `source` as Transform stores it, in memory, and each image's slide
    position `(x, y)` (IDC; None for BreakHis).

    With `bag_size` K (IDC), the images are the K x K region mosaics `histopath ingest
    --bag-size K` writes (`shard_writer.region_values`), labelled positive when any patch
    is, at their regions' origins.
    """
    from histopath.models.datasets import PatientExamples
    from histopath.data import bags, features, shard_writer
    from histopath.data.layouts import scan_source

    files = scan_source(dataset, source).files
    if bag_size:
        regions, _ = bags.group_into_regions(files, bag_size)
        records = [shard_writer.region_values(region, source, shard_writer.DEFAULT_MAX_PIXELS, [])
                   for region in regions]
        records = [record for record in records if record is not None]
        encoded = [record[features.IMAGE] for record in records]
        labels = [record[features.LABEL] for record in records]
        patients = [record[features.PATIENT_ID] for record in records]
        positions = [(record[features.PATCH_X], record[features.PATCH_Y]) for record in records]
    else:
        encoded = [pathlib.Path(source, f.relative_path).read_bytes() for f in files]
        labels = [f.label for f in files]
        patients = [f.patient_id for f in files]
        positions = [(f.patch_x, f.patch_y) for f in files]
    data = PatientExamples(_as_stored(encoded, image_size, stain_normalization),
                           np.array(labels, np.int64), np.array(patients))
    return data, (positions if all(x is not None for x, _ in positions) else None)


def held_out_estimate(labels: np.ndarray, probability: np.ndarray, patients: np.ndarray,
                      groups: List[List[str]], seed: int) -> Dict[str, Any]:
    """Scores cross-validated predictions; each fold's images are called at the
    balanced-accuracy threshold of the other folds' predictions."""
    from histopath.models.cross_validation import BOOTSTRAP_RESAMPLES
    from histopath.evaluation import scoring
    from histopath.evaluation.operating_point import balanced_accuracy_threshold

    predicted = np.zeros(len(labels), np.int64)
    thresholds = []
    for held_out in groups:
        mask = np.isin(patients, held_out)
        threshold = balanced_accuracy_threshold(labels[~mask], probability[~mask])
        predicted[mask] = probability[mask] >= threshold
        thresholds.append(float(threshold))
    scored = scoring.score_predictions(labels, probability, predicted, patients,
                                       threshold=float(np.median(thresholds)),
                                       bootstrap=BOOTSTRAP_RESAMPLES, seed=seed)
    return {"fold_thresholds": thresholds, "image_level": scored["image_level"],
            "patient_level": scored["patient_level"]}


def run_fold(trainer, data, groups, index: int, seed: int, refit: bool) -> Dict[str, Any]:
    """One fold of one candidate (and its refit, `cross_validation.fold_predictions`), with
    its wall time."""
    from histopath.models import cross_validation

    started = time.perf_counter()
    fold = cross_validation.fold_predictions(trainer, data, groups, index, seed, refit)
    fold["seconds"] = round(time.perf_counter() - started, 1)
    return fold


def run(dataset: str, source: str, preset: str, folds: int, seed: int, refit: bool,
        cache: Optional[pathlib.Path], log_dir: pathlib.Path,
        overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The cross-validated predictions of every candidate of `preset` (module docstring)."""
    from histopath.models import cross_validation
    from histopath.evaluation.slide_context import smooth_slide_scores
    from histopath.pipeline import presets
    from histopath.pipeline.config import resolve

    config = resolve(presets.layer(preset), overrides or {}, {"dataset": dataset, "seed": seed})
    data, positions = load_raw(dataset, source, config.image_size, config.stain_normalization, config.bag_size)
    groups = cross_validation.stratified_patient_folds(data.patients, data.labels, folds, seed)
    print(f"[cv] {len(data.labels)} images of {len(set(data.patients))} patients, {folds} folds, "
          f"candidates {', '.join(config.models)}", flush=True)
    result: Dict[str, Any] = {"dataset": dataset, "preset": preset, "folds": groups, "seed": seed,
                              "patients": data.patients.tolist(), "labels": data.labels.tolist(),
                              "bag_size": config.bag_size, "positions": positions, "candidates": {}}
    for kind in config.models:
        trainer = cross_validation.Trainer(config.model_config(kind), config.model_training[kind],
                                           str(log_dir / kind))
        settings = {"model": trainer.model_config.to_dict(),
                    "training": trainer.training_config.to_dict(), "image_size": config.image_size}
        columns = {"probability": np.full(len(data.labels), np.nan)}
        if refit:
            columns["refit_probability"] = np.full(len(data.labels), np.nan)
        rows = []
        for index, held_out in enumerate(groups):
            key = content_key({"kind": kind, "settings": settings, "held_out": sorted(held_out), "refit": refit,
                               "seed": seed})
            fold, _ = cached_json(cache / f"{kind}-{key}.json" if cache else None,
                                  lambda: run_fold(trainer, data, groups, index, seed, refit))
            mask = np.isin(data.patients, held_out)
            for column, values in columns.items():
                values[mask] = fold[column]
            rows.append({key: value for key, value in fold.items() if not key.endswith("probability")})
            print(f"[cv] {kind} fold {index + 1}/{folds}: {fold['seconds']:.0f} s, kept {fold['kept_epochs']}",
                  flush=True)
        summary = cross_validation.summarize(data, columns["probability"], seed)
        estimates = {"alone": held_out_estimate(data.labels, columns["probability"], data.patients, groups, seed)}
        sigma = config.slide_context_sigma
        if sigma and positions:
            xs, ys = zip(*positions)
            columns["context_probability"] = smooth_slide_scores(columns["probability"], data.patients, xs, ys, sigma)
            estimates[f"slide context (sigma {sigma:g})"] = held_out_estimate(
                data.labels, columns["context_probability"], data.patients, groups, seed)
        for name, estimate in estimates.items():
            image = estimate["image_level"]["metrics"]
            print(f"[cv] {kind} held out, {name}: image AUC {with_interval(image['auc'])}, "
                  f"balanced accuracy {with_interval(image['balanced_accuracy'])}", flush=True)
        result["candidates"][kind] = {**{k: v.tolist() for k, v in columns.items()}, "folds": rows,
                                      "threshold": summary["threshold"], "metrics": summary["metrics"],
                                      "held_out_estimates": estimates}
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="raw image folder (the data set's layout)")
    parser.add_argument("--dataset", required=True, choices=["breakhis", "idc"])
    parser.add_argument("--preset", help="the recipe (default: the data set's preset)")
    parser.add_argument("--config", type=pathlib.Path, help="a JSON configuration layered over the preset")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--refit", action="store_true", help="also train each fold's refit_on_all model")
    parser.add_argument("--cache", type=pathlib.Path, default=REPO_ROOT / "bench" / "results" / "cv-cache")
    parser.add_argument("--output", type=pathlib.Path,
                        default=REPO_ROOT / "bench" / "results" / "cv_predictions.json")
    args = parser.parse_args(argv)
    from histopath.pipeline import presets

    preset = args.preset or presets.DEFAULT_PRESETS[args.dataset]
    args.cache.mkdir(parents=True, exist_ok=True)
    overrides = json.loads(args.config.read_text()) if args.config else {}
    result = run(args.dataset, args.data, preset, args.folds, args.seed, args.refit, args.cache,
                 args.output.parent / "cv-logs", overrides)
    result["config"] = overrides
    write_json(args.output, result)
    print(f"[cv] wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
