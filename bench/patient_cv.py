"""Patient-level cross-validation of training recipes, on the non-test patients only.

    python -m bench.patient_cv --records DIR [--bag-records DIR] [--config FILE]
                               [--output FILE.json] [--only patch|mil]

How the IDC training recipes (augmentation, weight averaging, MIL instance loss) were
chosen without looking at the test patients: the patients of the `train` and `eval`
splits of an ingested records folder are cut into `folds` groups (sorted ids, every
k-th patient), and each recipe is trained on all groups but one and scored on the one
left out, for every group in turn. The test split is never read.

- `patch`: the plain CNN of the baseline (`bench.baseline_cnn.build_plain_cnn`) on 50 px
  patches, compiled like the Trainers (`training.compile_model`, optionally with weight
  averaging), a fixed number of epochs, the project's augmentation
  (`augment.augment_dataset`). Score: patch AUC of the held-out patients; with
  `--bag-records`, also how well its patch scores rank the IDC-positive patches inside
  the held-out positive regions (`within_bag`: a reference for the MIL attention from a
  model that was trained WITH patch labels).
- `mil`: the project's MIL model (`mil.build_mil_model`) on the region bags of
  `histopath ingest --bag-size K`, a fixed number of epochs. Scores: region AUC and the
  attention's localisation of the IDC-positive patches (`localisation_scoring`).

Recipes and budgets come from `bench/configs/patient_cv.json` (a recipe may set its own
`epochs`, and `"stain_normalization": true` trains and scores on stain-normalised images,
`image_ops.normalize_stain`, as the pipeline's Transform makes them with the same option;
`"slide_context_sigmas": [...]` also scores the held-out patch probabilities averaged over
each slide, `slide_context.smooth_slide_scores`, at each Gaussian width, and for a patch
recipe with `--bag-records` how those averaged probabilities rank the IDC-positive patches
inside the held-out positive regions (`within_bag_context`); a MIL recipe's
`"tile_context_sigmas": [...]` scores its instance classifier's tile probabilities the same
way, alone (`tile_within_bag`) and averaged over each slide's tiles
(`tile_within_bag_context`)). Slide-context recipes also record `best_balanced_accuracy`:
alone and per width, the balanced accuracy at the threshold best on the held-out patients
themselves, chosen in hindsight, so an upper bound for any threshold rule.
Nothing is chosen on the held-out group (no early stopping, no epoch selection), so its
scores are unbiased estimates for patients the recipe has not seen.

With `--cache DIR`, each fold's result is stored under a hash of everything that decides
it (experiment, recipe, budgets, seed, held-out patients, data folders, and the source of
the model, training, augmentation and image code and of this file's fold functions); a
later run with nothing of that changed reads it back instead of training again (the runs
are deterministic: a re-run reproduced every fold AUC to 4 decimals). Delete the folder to
recompute all.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import pathlib
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np

from bench.common import cached_json, content_key, write_json

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "bench" / "configs" / "patient_cv.json"
CV_SPLITS = ("train", "eval")  # the patients a recipe may be chosen on; never "test"
_PREDICT_BATCH = 256


def patient_folds(patients: Sequence[str], folds: int) -> List[List[str]]:
    """Cuts the distinct patients into `folds` groups: sorted, every `folds`-th patient.

    Args:
      patients: patient ids (repeats are fine).
      folds: number of groups, at least 2 and at most the number of patients.

    Returns:
      `folds` lists of patient ids, disjoint, together all patients.
    """
    from histopath.errors import ConfigError

    distinct = sorted(set(patients), key=lambda p: (len(p), p))
    if not 2 <= folds <= len(distinct):
        raise ConfigError(f"cannot cut {len(distinct)} patients into {folds} folds")
    return [distinct[index::folds] for index in range(folds)]


def load_patches(records_dir: str, image_size: int = 50) -> Dict[str, np.ndarray]:
    """Decodes the train and eval splits of an ingested records folder (uint8 images), with
    each patch's slide position (`x`, `y`)."""
    from bench.baseline_cnn import load_positions, load_split

    images, labels, patients, xs, ys = [], [], [], [], []
    for split in CV_SPLITS:
        split_images, split_labels, split_patients = load_split(records_dir, split, image_size)
        images.append(np.round(split_images * 255.0).astype(np.uint8))
        labels.append(split_labels)
        patients += split_patients
        split_xs, split_ys = load_positions(records_dir, split)
        xs.append(split_xs)
        ys.append(split_ys)
    return {"images": np.concatenate(images), "labels": np.concatenate(labels), "patients": np.array(patients),
            "x": np.concatenate(xs), "y": np.concatenate(ys)}


def load_bags(bag_records_dir: str) -> Dict[str, np.ndarray]:
    """Decodes the train and eval region bags of `ingest --bag-size K` (uint8 mosaics), with
    each region's slide position (`x`, `y`: its origin)."""
    import tensorflow as tf

    from bench.region_bags import iter_record_batches

    columns: Dict[str, list] = {"images": [], "labels": [], "patch_labels": [], "patients": [], "x": [], "y": []}
    for split in CV_SPLITS:
        for batch in iter_record_batches(bag_records_dir, split, 128):
            columns["images"] += [tf.io.decode_png(item, channels=3).numpy() for item in batch["image"]]
            columns["labels"].append(batch["label"])
            columns["patch_labels"].append(batch["patch_labels"])
            columns["patients"] += list(batch["patient_id"])
            columns["x"].append(batch["origin_x"])
            columns["y"].append(batch["origin_y"])
    return {"images": np.stack(columns["images"]), "labels": np.concatenate(columns["labels"]),
            "patch_labels": np.concatenate(columns["patch_labels"]), "patients": np.array(columns["patients"]),
            "x": np.concatenate(columns["x"]), "y": np.concatenate(columns["y"])}


def stain_normalized(images: np.ndarray, batch: int = 512) -> np.ndarray:
    """`image_ops.normalize_stain` over uint8 images `(n, h, w, 3)`, in batches; uint8 out."""
    import tensorflow as tf

    from histopath.models import image_ops

    out = np.empty_like(images)
    for start in range(0, len(images), batch):
        chunk = tf.constant(images[start:start + batch], tf.float32) / 255.0
        out[start:start + batch] = np.round(image_ops.normalize_stain(chunk).numpy() * 255.0).astype(np.uint8)
    return out


class _Normalized:
    """Stain-normalised copies of the data, made on first use and kept for later recipes."""

    def __init__(self):
        self._copies: Dict[int, Dict[str, np.ndarray]] = {}

    def __call__(self, data: Optional[Mapping[str, np.ndarray]], recipe: Mapping[str, Any]):
        if data is None or not recipe.get("stain_normalization"):
            return data
        if id(data) not in self._copies:
            self._copies[id(data)] = {**data, "images": stain_normalized(data["images"])}
        return self._copies[id(data)]


def _training_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, augment_config, seed: int,
                      multi_output: bool):
    """Shuffled, class-weighted, augmented batches gathered from in-memory uint8 images."""
    import tensorflow as tf

    from histopath.models import augment, training

    weights = training.class_weights_from_counts({0: int((labels == 0).sum()), 1: int((labels == 1).sum())})
    sample_weights = np.asarray(weights, np.float32)[labels] if weights else np.ones(len(labels), np.float32)
    image_tensor = tf.constant(images)
    target_tensor = tf.constant(labels.astype(np.float32)[:, None])
    weight_tensor = tf.constant(sample_weights)

    def gather(indices):
        batch = tf.cast(tf.gather(image_tensor, indices), tf.float32) / 255.0
        targets, weights_ = tf.gather(target_tensor, indices), tf.gather(weight_tensor, indices)
        if multi_output:
            return batch, {training.PROBABILITY: targets}, {training.PROBABILITY: weights_}
        return batch, targets, weights_

    dataset = (tf.data.Dataset.range(len(labels)).shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
               .batch(batch_size).map(gather))
    return augment.augment_dataset(dataset, augment_config, seed).prefetch(tf.data.AUTOTUNE)


def _fit(model, dataset, epochs: int, learning_rate: float, weight_averaging: Optional[float],
         multi_output: bool) -> float:
    """Fits for a fixed number of epochs (LR halved on a training-loss plateau); seconds."""
    import tf_keras as keras

    from histopath.models import training

    training.compile_model(model, learning_rate, multi_output, weight_averaging)
    started = time.perf_counter()
    model.fit(dataset, epochs=epochs, verbose=0,
              callbacks=[keras.callbacks.ReduceLROnPlateau("loss", factor=0.5, patience=2)])
    return time.perf_counter() - started  # with weight averaging, fit leaves the average in the model


def _within_bag_auc(scores: np.ndarray, patch_labels: np.ndarray, bag_labels: np.ndarray) -> Optional[float]:
    """Mean per-bag AUC of tile scores over positive bags holding both kinds of patch."""
    from bench.localisation_scoring import localisation_scores

    bags = {"attention": scores, "patch_labels": patch_labels, "label": bag_labels,
            "probability": np.ones(len(bag_labels)), "patient_id": np.zeros(len(bag_labels)).astype(str)}
    return localisation_scores(bags, bootstrap=0)["within_bag"]["value"]


def _slide_context_scores(labels, scores, patients, xs, ys, sigmas: Sequence[float]) -> Dict[str, Dict[str, Any]]:
    """The held-out scores averaged over each slide (`slide_context`), each width smoothed once:
    "slide_context", the AUC per width; "best_balanced_accuracy", alone ("none") and per
    width, the balanced accuracy at the threshold best on these patients themselves
    (`operating_point.balanced_accuracy_in_hindsight`: an upper bound for any threshold rule)."""
    from histopath.evaluation import slide_context
    from histopath.evaluation.operating_point import balanced_accuracy_in_hindsight
    from histopath.evaluation.metrics import roc_auc

    aucs, best = {}, {"none": balanced_accuracy_in_hindsight(labels, scores)[1]}
    for sigma in sigmas:
        smoothed = slide_context.smooth_slide_scores(scores, patients, xs, ys, float(sigma))
        aucs[f"{float(sigma):g}"] = roc_auc(labels, smoothed)
        best[f"{float(sigma):g}"] = balanced_accuracy_in_hindsight(labels, smoothed)[1]
    return {"slide_context": aucs, "best_balanced_accuracy": best}


def _within_bag_context_aucs(tile_scores: np.ndarray, patch_labels: np.ndarray, bag_labels: np.ndarray,
                             patients: np.ndarray, origin_x: np.ndarray, origin_y: np.ndarray,
                             sigmas: Sequence[float], times: Optional[np.ndarray] = None
                             ) -> Dict[str, Optional[float]]:
    """Within-bag AUC (`_within_bag_auc`) of tile scores averaged over each slide's tiles
    (`localisation_scoring.tile_slide_context`, sigma in tile widths), per width; with `times`
    (per tile, e.g. the attention), of the averaged scores multiplied by it."""
    from bench.localisation_scoring import tile_slide_context

    positive = bag_labels == 1
    factor = np.ones(patch_labels.shape) if times is None else np.asarray(times, np.float64)
    return {f"{float(sigma):g}": _within_bag_auc(
                (tile_slide_context(tile_scores, patch_labels, patients, origin_x, origin_y, float(sigma))
                 * factor)[positive], patch_labels[positive], bag_labels[positive])
            for sigma in sigmas}


def _bag_tiles(mosaics: np.ndarray, tile: int) -> np.ndarray:
    """(n, K*t, K*t, 3) mosaics -> (n * K*K, t, t, 3) tiles, row-major per bag."""
    n, side = mosaics.shape[0], mosaics.shape[1]
    grid = side // tile
    tiles = mosaics.reshape(n, grid, tile, grid, tile, 3).transpose(0, 1, 3, 2, 4, 5)
    return tiles.reshape(n * grid * grid, tile, tile, 3)


def patch_fold(data: Mapping[str, np.ndarray], held_out: Sequence[str], recipe: Mapping[str, Any],
               settings: Mapping[str, Any], bags: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, Any]:
    """Trains the plain CNN on all patients but `held_out` and scores the held-out ones."""
    import tf_keras as keras

    from bench.baseline_cnn import BaselineConfig, build_plain_cnn
    from histopath.models.config import AugmentConfig
    from histopath.evaluation.metrics import roc_auc

    seed = int(settings["seed"])
    keras.utils.set_random_seed(seed)
    held = np.isin(data["patients"], list(held_out))
    augment_config = AugmentConfig.from_dict({**settings.get("augment", {}), **recipe.get("augment", {})})
    model = build_plain_cnn(BaselineConfig(conv_layers=int(settings["conv_layers"]), image_size=data["images"].shape[1]))
    dataset = _training_dataset(data["images"][~held], data["labels"][~held], int(settings["batch_size"]),
                                augment_config, seed, multi_output=False)
    seconds = _fit(model, dataset, int(settings["epochs"]), float(settings["learning_rate"]),
                   recipe.get("weight_averaging"), multi_output=False)
    scores = model.predict(data["images"][held].astype(np.float32) / 255.0, batch_size=_PREDICT_BATCH,
                           verbose=0).reshape(-1)
    labels, patients = data["labels"][held], data["patients"][held]
    result = {"held_out": list(held_out), "train_seconds": round(seconds, 1), "n_held_out": int(held.sum()),
              "auc": roc_auc(labels, scores),
              "per_patient_auc": {p: roc_auc(labels[patients == p], scores[patients == p])
                                  for p in sorted(set(patients), key=lambda p: (len(p), p))}}
    if recipe.get("slide_context_sigmas"):
        result.update(_slide_context_scores(labels, scores, patients, data["x"][held], data["y"][held],
                                            recipe["slide_context_sigmas"]))
    if bags is not None:
        positive = np.isin(bags["patients"], list(held_out)) & (bags["labels"] == 1)
        size = data["images"].shape[1]
        tiles = _bag_tiles(bags["images"][positive], size)
        if recipe.get("stain_normalization"):  # each patch on its own, as the patch model saw them
            tiles = stain_normalized(tiles)
        tiles = tiles.astype(np.float32) / 255.0
        tile_scores = model.predict(tiles, batch_size=_PREDICT_BATCH, verbose=0).reshape(positive.sum(), -1)
        result["within_bag"] = _within_bag_auc(tile_scores, bags["patch_labels"][positive],
                                               bags["labels"][positive])
        if recipe.get("slide_context_sigmas"):
            # The held-out patch probabilities regrouped into the same regions, averaged over
            # the slide as above: how well a model trained WITH patch labels localises once it
            # has slide context.
            from bench.region_bags import patches_as_bags

            regions = patches_as_bags(scores, labels, patients, data["x"][held], data["y"][held],
                                      int(round(np.sqrt(bags["patch_labels"].shape[1]))))
            result["within_bag_context"] = _within_bag_context_aucs(
                regions["attention"], regions["patch_labels"], regions["label"], regions["patient_id"],
                regions["origin_x"], regions["origin_y"], recipe["slide_context_sigmas"])
    return result


def mil_fold(bags: Mapping[str, np.ndarray], held_out: Sequence[str], recipe: Mapping[str, Any],
             settings: Mapping[str, Any]) -> Dict[str, Any]:
    """Trains the MIL model on the bags of all patients but `held_out`; scores the rest."""
    import tf_keras as keras

    from bench.localisation_scoring import localisation_scores
    from histopath.models import mil
    from histopath.models.config import AugmentConfig, MilConfig
    from histopath.evaluation.metrics import roc_auc

    seed = int(settings["seed"])
    keras.utils.set_random_seed(seed)
    held = np.isin(bags["patients"], list(held_out))
    config = MilConfig.from_dict({**settings["model"], **recipe.get("model", {})})
    augment_config = AugmentConfig.from_dict({**settings.get("augment", {}), **recipe.get("augment", {})})
    model = mil.build_mil_model(config)
    dataset = _training_dataset(bags["images"][~held], bags["labels"][~held], int(settings["batch_size"]),
                                augment_config, seed, multi_output=True)
    seconds = _fit(model, dataset, int(settings["epochs"]), config.learning_rate, recipe.get("weight_averaging"),
                   multi_output=True)
    outputs = model.predict(bags["images"][held].astype(np.float32) / 255.0, batch_size=64, verbose=0)
    probability = np.asarray(outputs[mil.PROBABILITY], np.float64).reshape(-1)
    labels, patients = bags["labels"][held], bags["patients"][held]
    scores = localisation_scores({"attention": np.asarray(outputs[mil.ATTENTION], np.float64),
                                  "patch_labels": bags["patch_labels"][held], "label": labels,
                                  "probability": probability, "patient_id": patients}, bootstrap=0)
    result = {"held_out": list(held_out), "train_seconds": round(seconds, 1), "n_held_out": int(held.sum()),
              "auc": roc_auc(labels, probability), "within_bag": scores["within_bag"]["value"],
              "pooled": scores["pooled"]["value"]}
    if recipe.get("slide_context_sigmas"):  # regions averaged over their neighbouring regions
        result.update(_slide_context_scores(labels, probability, patients, bags["x"][held], bags["y"][held],
                                            recipe["slide_context_sigmas"]))
    if recipe.get("tile_context_sigmas"):
        # The instance classifier's tile probabilities (as exported: 0 on glass tiles) ranked
        # within the positive regions like the attention, alone and averaged over each slide.
        tile_probability = np.asarray(outputs[mil.TISSUE_MASK], np.float64) / (
            1.0 + np.exp(-np.asarray(outputs[mil.INSTANCE_LOGIT], np.float64)))
        patch_labels = bags["patch_labels"][held]
        result["tile_within_bag"] = _within_bag_auc(tile_probability[labels == 1], patch_labels[labels == 1],
                                                    labels[labels == 1])
        result["tile_within_bag_context"] = _within_bag_context_aucs(
            tile_probability, patch_labels, labels, patients, bags["x"][held], bags["y"][held],
            recipe["tile_context_sigmas"])
        # ... and times the attention: do the two carry different evidence?
        result["tile_attention_within_bag_context"] = _within_bag_context_aucs(
            tile_probability, patch_labels, labels, patients, bags["x"][held], bags["y"][held],
            recipe["tile_context_sigmas"], times=np.asarray(outputs[mil.ATTENTION], np.float64))
    return result


def _scores_line(run_result: Mapping[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{key} " + ("n/a" if run_result.get(key) is None else f"{run_result[key]:.4f}")
                     for key in keys)


def _summarise(folds: List[Dict[str, Any]], keys: Sequence[str]) -> Dict[str, Any]:
    summary = {}
    for key in keys:
        values = [fold[key] for fold in folds if fold.get(key) is not None]
        summary[key] = {"mean": float(np.mean(values)) if values else None, "folds": [fold.get(key) for fold in folds]}
    return summary


# The library code a fold's result depends on (hashed into the cache key).
FOLD_MODULES = ("histopath.models.image_ops", "histopath.models.augment", "histopath.models.mil",
                "histopath.models.config", "histopath.models.training", "bench.baseline_cnn",
                "bench.region_bags", "bench.localisation_scoring", "histopath.evaluation.slide_context",
                "histopath.data.bags", "histopath.evaluation.operating_point")


def code_fingerprint() -> str:
    """Hash of the source a fold runs: `FOLD_MODULES` and this file's fold functions."""
    from histopath.pipeline.fingerprint import source_fingerprint

    local = "".join(inspect.getsource(function) for function in (
        stain_normalized, _training_dataset, _fit, _within_bag_auc, _slide_context_scores, _within_bag_context_aucs,
        _bag_tiles, patch_fold, mil_fold))
    return hashlib.sha256((source_fingerprint(FOLD_MODULES) + local).encode()).hexdigest()[:16]


def fold_key(kind: str, recipe: Mapping[str, Any], settings: Mapping[str, Any], held_out: Sequence[str],
             data_dirs: Sequence[Optional[str]], code: str) -> str:
    """The cache key of one fold: a hash of everything its result depends on (`code`: the
    `code_fingerprint()`)."""
    budgets = {key: value for key, value in settings.items() if key != "recipes"}
    return content_key({"kind": kind, "recipe": recipe, "settings": budgets, "held_out": list(held_out),
                        "data": [str(pathlib.Path(path).resolve()) if path else None for path in data_dirs],
                        "code": code}, length=24)


def _cross_validate(kind: str, groups: List[List[str]], settings: Mapping[str, Any], seed: int,
                    run_fold, keys: Sequence[str], say, cache: Optional[pathlib.Path] = None,
                    data_dirs: Sequence[Optional[str]] = ()) -> Dict[str, Any]:
    """Every recipe of `settings["recipes"]` on every fold: `run_fold(held_out, recipe, settings)`.

    The settings passed on carry the seed and the recipe's own `epochs` when it sets them.
    With `cache`, a fold already run with the same key is read back, not trained again.
    """
    block: Dict[str, Any] = {"folds": groups, "recipes": {}}
    code = code_fingerprint() if cache else ""
    for name, recipe in settings["recipes"].items():
        runs = []
        for index, held_out in enumerate(groups):
            fold_settings = {**settings, "seed": seed, "epochs": recipe.get("epochs", settings["epochs"])}
            cached = cache / f"{kind}-{fold_key(kind, recipe, fold_settings, held_out, data_dirs, code)}.json" \
                if cache else None
            say(f"{kind} recipe {name}, fold {index + 1}/{len(groups)} (held out: {', '.join(held_out)})")
            fold, from_cache = cached_json(cached, lambda: run_fold(held_out, recipe, fold_settings))
            runs.append(fold)
            say("  " + (f"cached ({cached.name})" if from_cache else _scores_line(fold, ("auc", "within_bag"))))
        block["recipes"][name] = {"recipe": recipe, "runs": runs, **_summarise(runs, keys)}
    return block


def run(records: Optional[str], bag_records: Optional[str], config: Mapping[str, Any],
        only: Optional[str] = None, progress: bool = True, cache: Optional[str] = None) -> Dict[str, Any]:
    """Runs every configured recipe on every fold; returns per-fold and mean scores."""
    def say(message: str) -> None:
        if progress:
            print(f"[patient_cv] {message}", file=sys.stderr, flush=True)

    result: Dict[str, Any] = {"config": dict(config), "splits_used": list(CV_SPLITS)}
    bags = load_bags(bag_records) if bag_records else None
    folds, seed = int(config["folds"]), config["seed"]
    cache_dir = pathlib.Path(cache) if cache else None
    normalized = _Normalized()
    if records and only in (None, "patch"):
        data = load_patches(records)
        result["patch"] = _cross_validate(
            "patch", patient_folds(data["patients"].tolist(), folds), config["patch"], seed,
            lambda held_out, recipe, settings: patch_fold(normalized(data, recipe), held_out, recipe, settings,
                                                          bags),
            ("auc", "within_bag"), say, cache_dir, (records, bag_records))
    if bags is not None and only in (None, "mil"):
        result["mil"] = _cross_validate(
            "mil", patient_folds(bags["patients"].tolist(), folds), config["mil"], seed,
            lambda held_out, recipe, settings: mil_fold(normalized(bags, recipe), held_out, recipe, settings),
            ("auc", "within_bag", "pooled"), say, cache_dir, (bag_records,))
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.patient_cv", description=__doc__.split("\n")[0])
    parser.add_argument("--records", help="`histopath ingest --dataset idc` output (patches)")
    parser.add_argument("--bag-records", help="`histopath ingest --dataset idc --bag-size K` output")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipes and budgets (JSON)")
    parser.add_argument("--only", choices=("patch", "mil"), help="run one experiment")
    parser.add_argument("--output", help="write the result here (JSON)")
    parser.add_argument("--cache", help="folder of per-fold results to reuse for unchanged recipes")
    args = parser.parse_args(argv)
    from histopath.errors import HistopathError

    if not args.records and not args.bag_records:
        parser.error("give --records and/or --bag-records")
    try:
        config = json.loads(pathlib.Path(args.config).read_text())
    except (OSError, ValueError) as error:
        print(f"error: cannot read the config {args.config}: {error}", file=sys.stderr)
        return 1
    try:
        result = run(args.records, args.bag_records, config, args.only, cache=args.cache)
    except HistopathError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    if args.output:
        write_json(pathlib.Path(args.output), result)
    for experiment in ("patch", "mil"):
        for name, entry in result.get(experiment, {}).get("recipes", {}).items():
            means = ", ".join(f"{key} {value['mean']:.4f}" for key, value in entry.items()
                              if isinstance(value, dict) and value.get("mean") is not None)
            print(f"{experiment} {name}: {means}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
