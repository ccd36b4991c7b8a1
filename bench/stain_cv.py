"""Stain normalisation methods compared by patient-level cross-validation on IDC.

    python -m bench.stain_cv --data DIR [--data DIR ...] [--folds 3] [--epochs 4]
                             [--train-fraction F] [--weight-averaging DECAY] [--output FILE.json]
                             [--cache DIR]

Every patient of the raw IDC folders is held out once (`cross_validation.
stratified_patient_folds`, label-stratified patient folds). The images are decoded and
resized to 50 px by the pipeline's own `preprocessing_fn` (no normalisation), then each
method of `stain_normalization.METHODS` is applied to that same stored batch
(`stain_normalization.normalize`, as Transform applies it before storing). Per method and
fold, the plain CNN of `bench.patient_cv` (the same model and augmentation as its
`stain_normalized` recipe, fixed epochs, no weight averaging: `SETTINGS`) is trained on the other folds'
patients and predicts the held-out patches: nothing is chosen on the held-out patients.

Reported per method: the patch AUC of the pooled cross-validated predictions with a
patient-bootstrap interval, and the paired difference to `od_scaling` (the IDC presets'
method until now) in the same bootstrap draws (`model_comparison.auc_draws`).
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np

from bench.common import cached_json, content_key, write_json

BASELINE = "od_scaling"
# No weight averaging: with the short budgets this bench affords, an average with decay 0.998
# over a few hundred steps still leans on the initial weights (0.998^200 = 0.67).
SETTINGS = {"conv_layers": 6, "batch_size": 64, "learning_rate": 0.001, "weight_averaging": None,
            "augment": {"crop_fraction": 1.0}}


def normalized(images: np.ndarray, method: str, batch: int = 512) -> np.ndarray:
    """`stain_normalization.normalize(method)` over uint8 images `(n, h, w, 3)`; uint8 out."""
    import tensorflow as tf

    from histopath.models import stain_normalization

    out = np.empty_like(images)
    for start in range(0, len(images), batch):
        chunk = tf.constant(images[start:start + batch], tf.float32) / 255.0
        out[start:start + batch] = np.round(
            stain_normalization.normalize(chunk, method).numpy() * 255.0).astype(np.uint8)
    return out


def fold_scores(images: np.ndarray, labels: np.ndarray, held: np.ndarray, epochs: int, seed: int,
                train_fraction: float = 1.0, settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Trains the plain CNN on `~held` (a seeded random `train_fraction` of those patches)
    and returns the held-out patch scores and the training seconds."""
    import tf_keras as keras

    from bench.baseline_cnn import BaselineConfig, build_plain_cnn
    from bench.patient_cv import _fit, _training_dataset
    from histopath.models.config import AugmentConfig

    keras.utils.set_random_seed(seed)
    settings = settings or SETTINGS
    model = build_plain_cnn(BaselineConfig(conv_layers=settings["conv_layers"], image_size=images.shape[1]))
    train = np.flatnonzero(~held)
    if train_fraction < 1.0:
        train = np.sort(np.random.default_rng(seed).choice(train, int(round(train_fraction * len(train))), False))
    dataset = _training_dataset(images[train], labels[train], settings["batch_size"],
                                AugmentConfig.from_dict(settings["augment"]), seed, multi_output=False)
    seconds = _fit(model, dataset, epochs, settings["learning_rate"], settings["weight_averaging"], multi_output=False)
    scores = model.predict(images[held].astype(np.float32) / 255.0, batch_size=512, verbose=0).reshape(-1)
    keras.backend.clear_session()
    return {"scores": scores.astype(float).tolist(), "train_seconds": round(seconds, 1)}


def compare(labels: np.ndarray, patients: np.ndarray, scores: Dict[str, np.ndarray], seed: int) -> Dict[str, Any]:
    """Patch AUC per method with a patient-bootstrap interval, and the paired difference to
    `BASELINE` in the same draws."""
    from histopath.evaluation import model_comparison

    draws = model_comparison.auc_draws(labels, patients, scores, seed=seed)
    table = {}
    for method in scores:
        row = {"auc": float(draws[f"{method}:point"][0]), "auc_interval": model_comparison.interval(draws[method])}
        if method != BASELINE and BASELINE in scores:
            difference = draws[method] - draws[BASELINE]
            row["difference_to_" + BASELINE] = row["auc"] - float(draws[f"{BASELINE}:point"][0])
            row["difference_interval"] = model_comparison.interval(difference)
            row["share_of_draws_better"] = float(np.mean(difference[np.isfinite(difference)] > 0))
        table[method] = row
    return table


def decoded(sources: Sequence[str], cache: Optional[pathlib.Path]):
    """Images, labels and patients of the raw IDC folders as Transform stores them without
    normalisation; kept under `cache` (keyed by the folders) for later runs."""
    from bench.cv_predictions import load_raw

    folders = [str(pathlib.Path(source).resolve()) for source in sources]
    key = hashlib.sha256("\n".join(folders).encode()).hexdigest()[:12]
    stored = cache / f"decoded-{key}.npz" if cache else None
    if stored is not None and stored.exists():
        with np.load(stored) as arrays:
            return arrays["images"], arrays["labels"], arrays["patients"]
    parts = [load_raw("idc", source, 50, "none") for source in sources]
    images = np.concatenate([data.images for data, _ in parts])
    labels = np.concatenate([np.asarray(data.labels) for data, _ in parts]).astype(int)
    patients = np.concatenate([np.asarray(data.patients).astype(str) for data, _ in parts])
    if stored is not None:
        stored.parent.mkdir(parents=True, exist_ok=True)
        partial = stored.with_suffix(".partial.npz")
        np.savez(partial, images=images, labels=labels, patients=patients)
        partial.rename(stored)
    return images, labels, patients


def run(sources: Sequence[str], methods: Sequence[str], folds: int, epochs: int, seed: int,
        cache: Optional[pathlib.Path], train_fraction: float = 1.0,
        weight_averaging: Optional[float] = None) -> Dict[str, Any]:
    """The cross-validated comparison (module docstring); `weight_averaging` replaces
    `SETTINGS`' (none) with that decay."""
    from histopath.models import cross_validation

    settings = SETTINGS if weight_averaging is None else {**SETTINGS, "weight_averaging": weight_averaging}
    started = time.perf_counter()
    images, labels, patients = decoded(sources, cache)
    groups = cross_validation.stratified_patient_folds(patients, labels, folds, seed)
    say(f"{len(labels)} patches of {len(set(patients))} patients from {', '.join(sources)}, {folds} folds, "
        f"decoded in {time.perf_counter() - started:.0f} s")
    result: Dict[str, Any] = {"sources": list(sources), "folds": groups, "epochs": epochs, "seed": seed,
                              "train_fraction": train_fraction,
                              "settings": settings, "n_patches": int(len(labels)),
                              "n_patients": int(len(set(patients))), "methods": {}}
    scores: Dict[str, np.ndarray] = {}
    for method in methods:
        tic = time.perf_counter()
        data = normalized(images, method) if method != "none" else images
        normalise_seconds = time.perf_counter() - tic
        column, rows = np.full(len(labels), np.nan), []
        for index, held_out in enumerate(groups):
            held = np.isin(patients, held_out)
            name = (f"{method}-f{index}-of{folds}-e{epochs}-s{seed}-n{len(labels)}-t{train_fraction:g}-"
                    f"{content_key(settings, length=8)}.json")
            fold, _ = cached_json(cache / name if cache else None,
                                  lambda: fold_scores(data, labels, held, epochs, seed, train_fraction, settings))
            column[held] = fold["scores"]
            rows.append({"held_out": list(held_out), "train_seconds": fold["train_seconds"]})
            say(f"{method} fold {index + 1}/{folds}: {fold['train_seconds']:.0f} s")
        scores[method] = column
        result["methods"][method] = {"folds": rows, "normalise_seconds": round(normalise_seconds, 1)}
    for method, row in compare(labels, patients, scores, seed).items():
        result["methods"][method].update(row)
        say(f"{method}: patch AUC {row['auc']:.4f} {row['auc_interval']}"
            + (f", vs {BASELINE} {row['difference_to_' + BASELINE]:+.4f} {row['difference_interval']}"
               if "difference_interval" in row else ""))
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def say(message: str) -> None:
    print(f"[stain_cv] {message}", file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    from histopath.models import stain_methods

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, help="raw IDC folder (repeatable)")
    parser.add_argument("--methods", default=",".join(stain_methods.METHODS))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train-fraction", type=float, default=1.0,
                        help="train each fold on this seeded random share of its patches (speed)")
    parser.add_argument("--weight-averaging", type=float, help="decay of the weight average (default: none)")
    parser.add_argument("--cache", type=pathlib.Path, help="per-fold results, reused when present")
    parser.add_argument("--output", type=pathlib.Path, default=pathlib.Path("bench/results/stain_cv.json"))
    args = parser.parse_args(argv)
    methods = [stain_methods.method_name(m) for m in args.methods.split(",")]
    result = run(args.data, methods, args.folds, args.epochs, args.seed, args.cache, args.train_fraction,
                 args.weight_averaging)
    write_json(args.output, result)
    say(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
