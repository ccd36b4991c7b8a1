"""What the 149 sparse IDC patients buy: patient cross-validation with and without them.

    python -m bench.idc_cohort_size --full RECORDS_IDC --sparse RECORDS_IDC_SPARSE
                                    [--folds 3] [--epochs N] [--output FILE.json]

Both folders are `histopath ingest --dataset idc` outputs (`idc/`, the 21 patients with
whole slides, and `idc-sparse/`, 149 patients with a few dozen patches each); every split
of both is used, so the folds cover all 170 patients. Each source is cut into `folds`
patient groups (`patient_cv.patient_folds`) and group k of both is fold k. For every fold,
the same recipe (the patch recipe chosen by `bench.patient_cv`: the plain CNN on
stain-normalised patches, `bench/configs/patient_cv.json`) is trained twice with the same
seed and budget:

- `with_sparse`: on every patient outside the fold (full and sparse);
- `without_sparse`: on the full patients outside the fold only (what training saw before);

and both score the same held-out patches of all the fold's patients. The pooled
out-of-fold predictions give each arm's patch AUC with a patient-bootstrap interval, and
the paired difference (same resamples of patients) says what the extra patients bought,
overall and on the held-out full and sparse patients separately. Nothing is chosen on the
held-out patients (fixed epochs, no early stopping).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np

from bench.common import write_json

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
ARMS = ("with_sparse", "without_sparse")
RECIPE = "stain_normalized"  # the patch recipe `bench.patient_cv` chose


def load_all_patches(records_dir: str) -> Dict[str, np.ndarray]:
    """Every split of an ingested IDC records folder as uint8 patches, labels and patients."""
    from bench.baseline_cnn import load_split
    from histopath.data.manifest import load_manifest

    images, labels, patients = [], [], []
    for split in load_manifest(records_dir)["splits"]:
        split_images, split_labels, split_patients = load_split(records_dir, split, 50)
        images.append(np.round(split_images * 255.0).astype(np.uint8))
        labels.append(split_labels)
        patients += split_patients
    return {"images": np.concatenate(images), "labels": np.concatenate(labels), "patients": np.array(patients)}


def cohort_folds(full_patients: Sequence[str], sparse_patients: Sequence[str], folds: int) -> List[List[str]]:
    """Fold k = group k of the full patients + group k of the sparse ones."""
    from bench.patient_cv import patient_folds

    return [a + b for a, b in zip(patient_folds(full_patients, folds), patient_folds(sparse_patients, folds))]


def train_and_score(images: np.ndarray, labels: np.ndarray, held_images: np.ndarray,
                    settings: Mapping[str, Any], recipe: Mapping[str, Any], seed: int) -> tuple[np.ndarray, float]:
    """The plain CNN trained as `patient_cv.patch_fold` trains it; the held-out scores and seconds."""
    import tf_keras as keras

    from bench.baseline_cnn import BaselineConfig, build_plain_cnn
    from bench.patient_cv import _fit, _training_dataset, _PREDICT_BATCH
    from histopath.models.config import AugmentConfig

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    augment_config = AugmentConfig.from_dict({**settings.get("augment", {}), **recipe.get("augment", {})})
    model = build_plain_cnn(BaselineConfig(conv_layers=int(settings["conv_layers"]), image_size=images.shape[1]))
    dataset = _training_dataset(images, labels, int(settings["batch_size"]), augment_config, seed, multi_output=False)
    seconds = _fit(model, dataset, int(settings["epochs"]), float(settings["learning_rate"]),
                   recipe.get("weight_averaging"), multi_output=False)
    scores = model.predict(held_images.astype(np.float32) / 255.0, batch_size=_PREDICT_BATCH, verbose=0)
    return scores.reshape(-1), seconds


def compare(predictions: Mapping[str, np.ndarray], labels: np.ndarray, patients: np.ndarray,
            mask: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """Each arm's AUC with its patient-bootstrap interval and the paired difference."""
    from histopath.evaluation import model_comparison

    keep = np.ones(len(labels), bool) if mask is None else mask
    draws = model_comparison.auc_draws(labels[keep], patients[keep].tolist(),
                                       {arm: predictions[arm][keep] for arm in ARMS})
    result: Dict[str, Any] = {"patients": int(len(set(patients[keep].tolist()))), "patches": int(keep.sum())}
    for arm in ARMS:
        result[arm] = {"auc": float(draws[f"{arm}:point"][0]), "ci": model_comparison.interval(draws[arm])}
    difference = draws["with_sparse"] - draws["without_sparse"]
    result["difference"] = {
        "auc": result["with_sparse"]["auc"] - result["without_sparse"]["auc"],
        "ci": model_comparison.interval(difference),
        "share_above_zero": float(np.mean(difference[np.isfinite(difference)] > 0))}
    return result


def run(full_dir: str, sparse_dir: str, folds: int, epochs: Optional[int], say) -> Dict[str, Any]:
    """Cross-validates both arms; the pooled out-of-fold comparison and per-fold AUCs."""
    from bench.patient_cv import DEFAULT_CONFIG, stain_normalized
    from histopath.evaluation.metrics import roc_auc

    config = json.loads(pathlib.Path(DEFAULT_CONFIG).read_text())
    settings, seed = dict(config["patch"]), int(config["seed"])
    recipe = settings["recipes"][RECIPE]
    if epochs is not None:
        settings["epochs"] = epochs
    full, sparse = load_all_patches(full_dir), load_all_patches(sparse_dir)
    images = stain_normalized(np.concatenate([full["images"], sparse["images"]]))
    labels = np.concatenate([full["labels"], sparse["labels"]])
    patients = np.concatenate([full["patients"], sparse["patients"]])
    from_full = np.concatenate([np.ones(len(full["labels"]), bool), np.zeros(len(sparse["labels"]), bool)])
    groups = cohort_folds(sorted(set(full["patients"].tolist())), sorted(set(sparse["patients"].tolist())), folds)
    say(f"{len(set(patients.tolist()))} patients ({len(set(full['patients'].tolist()))} full, "
        f"{len(set(sparse['patients'].tolist()))} sparse), {len(labels)} patches, {folds} folds, "
        f"{settings['epochs']} epochs")
    out_of_fold = {arm: np.full(len(labels), np.nan) for arm in ARMS}
    fold_results = []
    for index, held_out in enumerate(groups):
        held = np.isin(patients, held_out)
        entry: Dict[str, Any] = {"held_out": held_out}
        for arm in ARMS:
            train = ~held if arm == "with_sparse" else (~held & from_full)
            say(f"fold {index + 1}/{folds}, {arm}: {len(set(patients[train].tolist()))} training patients")
            scores, seconds = train_and_score(images[train], labels[train], images[held], settings, recipe, seed)
            out_of_fold[arm][held] = scores
            entry[arm] = {"auc": roc_auc(labels[held], scores), "train_seconds": round(seconds, 1),
                          "training_patients": len(set(patients[train].tolist())),
                          "training_patches": int(train.sum())}
            say(f"  AUC {entry[arm]['auc']:.4f} ({seconds:.0f} s)")
        fold_results.append(entry)
    return {
        "out_of_fold": {arm: scores.tolist() for arm, scores in out_of_fold.items()},
        "labels": labels.tolist(), "patients": patients.tolist(), "from_full": from_full.tolist(),
        "recipe": {RECIPE: recipe}, "settings": {k: v for k, v in settings.items() if k != "recipes"},
        "seed": seed, "folds": fold_results,
        "pooled": {"all": compare(out_of_fold, labels, patients),
                   "full_patients": compare(out_of_fold, labels, patients, from_full),
                   "sparse_patients": compare(out_of_fold, labels, patients, ~from_full)},
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idc_cohort_size", description=__doc__.split("\n")[0])
    parser.add_argument("--full", required=True, help="`histopath ingest --dataset idc` of idc/")
    parser.add_argument("--sparse", required=True, help="`histopath ingest --dataset idc` of idc-sparse/")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--output", default=str(REPO_ROOT / "bench" / "results" / "idc_cohort_size.json"))
    args = parser.parse_args(argv)
    started = time.time()
    result = run(args.full, args.sparse, args.folds, args.epochs,
                 lambda message: print(f"[idc_cohort_size] {message}", file=sys.stderr, flush=True))
    result["wall_seconds"] = round(time.time() - started, 1)
    predictions = {key: result.pop(key) for key in ("out_of_fold", "labels", "patients", "from_full")}
    output = pathlib.Path(args.output)
    write_json(output, result)
    np.savez_compressed(output.with_suffix(".npz"), **{key: np.asarray(value) if key != "out_of_fold" else
                                                       np.stack([value[arm] for arm in ARMS])
                                                       for key, value in predictions.items()})
    for name, block in result["pooled"].items():
        print(f"{name} ({block['patients']} patients): with {block['with_sparse']['auc']:.4f} "
              f"{block['with_sparse']['ci']}, without {block['without_sparse']['auc']:.4f} "
              f"{block['without_sparse']['ci']}, difference {block['difference']['auc']:+.4f} "
              f"{block['difference']['ci']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
