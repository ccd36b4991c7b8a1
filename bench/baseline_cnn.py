"""The plain-CNN baseline of the results page, trained on records ingested by `histopath ingest`.

    python -m bench.baseline_cnn --records DIR [--conv-layers N] [--image-size N]
                                 [--minutes M] [--output DIR]

A stack of 3x3 convolutions (BatchNorm + ReLU, 2x2 max-pool after every second one),
global average pooling, dropout and one sigmoid unit, trained from scratch with Adam for a
fixed wall-clock budget. The splits are decoded into memory with the project's one
decode/resize function (`image_ops.decode_and_resize`); training uses class weights from
the train labels, the project's training-time augmentation and ReduceLROnPlateau on the
eval loss. The decision threshold is chosen on the eval split (never on test), then the
test split is scored. The DenseNet201 and MIL models are compared against this.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np
import tensorflow as tf
import tf_keras as keras

from bench.common import write_json
from histopath.models import image_ops
from histopath.evaluation import slide_context
from histopath.models.augment import augment_dataset
from histopath.models.keras_utils import skip_autograph_for_tf_keras
from histopath.models.config import AugmentConfig
from histopath.evaluation.operating_point import balanced_accuracy_threshold
from histopath.models.training import class_weights_from_counts
from histopath.data import features
from histopath.data.manifest import load_manifest, split_shard_paths
from histopath.errors import ConfigError, DataError, HistopathError
from histopath.evaluation.metrics import roc_auc

skip_autograph_for_tf_keras()

DROPOUT_RATE = 0.3  # dropout between global average pooling and the output unit
# ReduceLROnPlateau on the eval loss.
REDUCE_LR_FACTOR = 0.5
REDUCE_LR_PATIENCE = 2
MIN_LEARNING_RATE = 1e-6
# Default augmentation: the project's default (flips, 90-degree rotations, stain amount,
# brightness and contrast) without crops (IDC patches are 50 px).
DEFAULT_AUGMENT = AugmentConfig(crop_fraction=1.0)
_READ_BATCH = 256  # records parsed and decoded per tf.data step when loading a split
_PREDICT_BATCH = 256
MODEL_NAME = "baseline.h5"
RESULT_NAME = "baseline.json"


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """Architecture and training budget of the plain CNN."""

    # 3x3 conv + BatchNorm + ReLU layers; 2x2 max-pool after every second one (while the
    # feature map is at least 2 pixels wide).
    conv_layers: int = 6
    # Filters of the first pair of convolutions, doubled every pair (capped at 256).
    base_filters: int = 32
    # Images are decoded and resized to this square size (pixels).
    image_size: int = 50
    # Stain-normalise every image after resizing (`image_ops.normalize_stain`), as the
    # pipeline's Transform does with `stain_normalization`.
    stain_normalization: bool = False
    # Training images per batch.
    batch_size: int = 64
    # Initial Adam learning rate (lowered by ReduceLROnPlateau on the eval loss).
    learning_rate: float = 1e-3
    # Wall-clock training budget; training stops at the end of the batch that passes it.
    minutes: float = 10.0
    # Upper bound on epochs when the budget is not used up first.
    max_epochs: int = 100
    # Seed of Python, NumPy, TensorFlow, the shuffle order and the augmentation stream.
    seed: int = 42
    # Training-time augmentation.
    augment: AugmentConfig = DEFAULT_AUGMENT

    def __post_init__(self) -> None:
        checks = [
            (self.conv_layers >= 1, "conv_layers must be at least 1"),
            (self.base_filters >= 1, "base_filters must be at least 1"),
            (self.image_size >= 8, "image_size must be at least 8"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (self.minutes >= 0, "minutes must not be negative"),
            (self.max_epochs >= 1, "max_epochs must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"BaselineConfig: {message}")


def build_plain_cnn(config: BaselineConfig) -> keras.Model:
    """Builds the uncompiled plain CNN: the registered "cnn" model kind (`models.cnn`) with
    this benchmark's architecture settings, in float32.

    Args:
      config: `conv_layers`, `base_filters` and `image_size` are used.

    Returns:
      A model mapping float32 `(batch, size, size, 3)` images in [0, 1] to `(batch, 1)`
      sigmoid probabilities of the malignant class.
    """
    from histopath.models import cnn

    return cnn.build(cnn.CnnConfig(image_size=config.image_size, conv_layers=config.conv_layers,
                                   base_filters=config.base_filters, dropout=DROPOUT_RATE, mixed_precision=None))


def load_split(
    records_dir: str | os.PathLike, split: str, image_size: int, stain_normalization: bool = False
) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Reads and decodes one split of an ingested records folder into memory.

    Args:
      records_dir: folder written by `histopath ingest` (holds `manifest.json`).
      split: split name in the manifest, e.g. "train".
      image_size: images are resized to `image_size x image_size`.
      stain_normalization: then stain-normalised (`image_ops.normalize_stain`).

    Returns:
      `(images, labels, patient_ids)`: float32 `(n, size, size, 3)` in [0, 1], int64
      `(n,)` 0/1 labels and the n patient ids, in record order.

    Raises:
      DataError: no manifest, unknown split, missing shard file or an empty split.
    """
    records_dir = os.fspath(records_dir)
    shards = split_shard_paths(load_manifest(records_dir), records_dir, split)

    spec = {
        features.IMAGE: tf.io.FixedLenFeature([], tf.string),
        features.LABEL: tf.io.FixedLenFeature([], tf.int64),
        features.PATIENT_ID: tf.io.FixedLenFeature([], tf.string),
    }

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        images = image_ops.decode_and_resize(parsed[features.IMAGE], image_size)
        if stain_normalization:
            images = image_ops.normalize_stain(images)
        return images, parsed[features.LABEL], parsed[features.PATIENT_ID]

    dataset = (tf.data.TFRecordDataset(shards, compression_type="GZIP")
               .batch(_READ_BATCH)
               .map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
    images, labels, patients = [], [], []
    for batch_images, batch_labels, batch_patients in dataset.as_numpy_iterator():
        images.append(batch_images)
        labels.append(batch_labels)
        patients.extend(p.decode("utf-8") for p in batch_patients)
    if not patients:
        raise DataError(f"{records_dir}: split {split!r} holds no record")
    return np.concatenate(images), np.concatenate(labels).astype(np.int64), patients


class _TimeBudget(keras.callbacks.Callback):
    """Stops training at the end of the first batch that ends after `seconds` of wall time,
    and counts the images trained on."""

    def __init__(self, seconds: float, train_size: int, batch_size: int) -> None:
        super().__init__()
        self.seconds, self.train_size, self.batch_size = seconds, train_size, batch_size
        self.started = time.monotonic()
        self.exhausted = False
        self.images_seen = 0
        self._batches = 0

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if time.monotonic() - self.started >= self.seconds:
            self.exhausted = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.images_seen += min(self._batches * self.batch_size, self.train_size)


class _Progress(keras.callbacks.Callback):
    """Records the learning rate of every epoch and prints one line per epoch to stderr."""

    def __init__(self, budget: _TimeBudget, show: bool) -> None:
        super().__init__()
        self.budget, self.show = budget, show
        self.learning_rates: List[float] = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        rate = float(keras.backend.get_value(self.model.optimizer.learning_rate))
        self.learning_rates.append(rate)
        if not self.show:
            return
        parts = [f"epoch {epoch + 1:3d}", f"{time.monotonic() - self.budget.started:7.1f}s"]
        for key in ("loss", "auc", "val_loss", "val_auc"):
            if key in logs:
                parts.append(f"{key} {float(logs[key]):.4f}")
        parts.append(f"lr {rate:.2g}")
        if self.budget.exhausted:
            parts.append("(time budget reached)")
        print("  ".join(parts), file=sys.stderr, flush=True)


def load_positions(records_dir: str | os.PathLike, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """`(patch_x, patch_y)` of one split's records, in record order (as `load_split`).

    Raises:
      DataError: as `load_split`, or records without slide positions (not IDC patches).
    """
    records_dir = os.fspath(records_dir)
    shards = split_shard_paths(load_manifest(records_dir), records_dir, split)
    spec = {name: tf.io.FixedLenFeature([], tf.int64, default_value=-1)
            for name in (features.PATCH_X, features.PATCH_Y)}
    dataset = (tf.data.TFRecordDataset(shards, compression_type="GZIP").batch(_READ_BATCH)
               .map(lambda serialized: tf.io.parse_example(serialized, spec)))
    xs, ys = [], []
    for batch in dataset.as_numpy_iterator():
        xs.append(batch[features.PATCH_X])
        ys.append(batch[features.PATCH_Y])
    xs, ys = np.concatenate(xs), np.concatenate(ys)
    if (xs < 0).any() or (ys < 0).any():
        raise DataError(f"{records_dir}: split {split!r} has records without slide positions")
    return xs, ys


def slide_context_predictions(
    output_dir: str | os.PathLike, records_dir: str | os.PathLike, config: BaselineConfig, sigma: float
) -> Dict[str, Any]:
    """The saved baseline with slide context (`slide_context.py`), as the pipeline's Trainer does it.

    The model `train_and_predict` saved in `output_dir` predicts the eval and test patches;
    each probability is averaged over its slide neighbourhood; the decision threshold is
    chosen on the smoothed eval probabilities.

    Returns:
      The setting `slide_context.eval_split_setting` chooses on the eval split (sigma,
      grid_step, rule, decision_threshold, eval_auc, eval_auc_without, eval_patients), plus
      `threshold` (= decision_threshold) and `test` (per-image `labels`, smoothed `scores`,
      `predictions`, `patient_ids`), like `train_and_predict`'s result.
    """
    model = keras.models.load_model(os.path.join(os.fspath(output_dir), MODEL_NAME), compile=False)

    def predicted(split: str):
        images, labels, patients = load_split(records_dir, split, config.image_size, config.stain_normalization)
        return (labels, _predict(model, images), patients, *load_positions(records_dir, split))

    setting = slide_context.eval_split_setting(*predicted("eval"), sigma)
    threshold = setting["decision_threshold"]
    labels, scores, patients, xs, ys = predicted("test")
    smoothed = slide_context.smooth_slide_scores(scores, patients, xs, ys, sigma)  # its own grid step
    return {**setting, "threshold": threshold,
            "test": {"labels": [int(v) for v in labels], "scores": [float(v) for v in smoothed],
                     "predictions": [int(v) for v in smoothed >= threshold], "patient_ids": list(patients)}}


def _predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return model.predict(images, batch_size=_PREDICT_BATCH, verbose=0).reshape(-1).astype(np.float64)


def _write_atomically(path: str, write) -> None:
    """Calls `write(temp_path)`, then renames the temporary file to `path`."""
    root, ext = os.path.splitext(path)
    temp = f"{root}.tmp-{os.getpid()}{ext}"
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def train_and_predict(
    records_dir: str | os.PathLike,
    config: BaselineConfig = BaselineConfig(),
    output_dir: Optional[str | os.PathLike] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Trains the plain CNN on the train split, picks its threshold on eval, scores test.

    Args:
      records_dir: folder written by `histopath ingest` with train, eval and test splits.
      config: architecture, training budget and seed.
      output_dir: if given, the model is saved there as `baseline.h5` and the result as
        `baseline.json` (each written to a temporary name, then renamed).
      progress: print one line per epoch to stderr.

    Returns:
      A JSON-serialisable dict: `config`, `records`, `dataset`, `threshold` (chosen on
      eval to maximise balanced accuracy), `train_seconds` (wall time of `fit`, tracing
      and per-epoch validation included), `epochs`, `train_images` (train split size),
      `images_seen`, `images_per_second` (images_seen / train_seconds), `history` (per
      epoch: loss, auc, val_loss, val_auc, lr), `eval_auc` (None if eval holds one class)
      and `test` with per-image `labels`, `scores`, `predictions` (score >= threshold)
      and `patient_ids`.

    Raises:
      DataError: no manifest in `records_dir`, or a split missing or empty.
    """
    records_dir = os.fspath(records_dir)
    manifest = load_manifest(records_dir)
    keras.utils.set_random_seed(config.seed)

    size, normalize = config.image_size, config.stain_normalization
    train_x, train_y, _ = load_split(records_dir, "train", size, normalize)
    eval_x, eval_y, _ = load_split(records_dir, "eval", size, normalize)
    test_x, test_y, test_patients = load_split(records_dir, "test", size, normalize)

    # Balanced class weights, applied as per-example loss weights.
    weights = class_weights_from_counts({0: int((train_y == 0).sum()), 1: int((train_y == 1).sum())})
    sample_weights = (np.asarray(weights, np.float32)[train_y] if weights
                      else np.ones(len(train_y), np.float32))

    # Batches gather from the in-memory tensors by shuffled index (no second copy of the
    # images in a shuffle buffer); every batch gets its own augmentation draw.
    train_images = tf.constant(train_x)
    train_labels = tf.constant(train_y.astype(np.float32)[:, None])
    train_weights = tf.constant(sample_weights)
    train_ds = (tf.data.Dataset.range(len(train_y))
                .shuffle(len(train_y), seed=config.seed, reshuffle_each_iteration=True)
                .batch(config.batch_size)
                .map(lambda idx: (tf.gather(train_images, idx), tf.gather(train_labels, idx),
                                  tf.gather(train_weights, idx))))
    train_ds = augment_dataset(train_ds, config.augment, config.seed).prefetch(tf.data.AUTOTUNE)
    eval_ds = (tf.data.Dataset.from_tensor_slices((eval_x, eval_y.astype(np.float32)[:, None]))
               .batch(_PREDICT_BATCH).prefetch(tf.data.AUTOTUNE))

    model = build_plain_cnn(config)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc")],
    )
    budget = _TimeBudget(config.minutes * 60.0, len(train_y), config.batch_size)
    progress_callback = _Progress(budget, progress)
    callbacks = [
        budget,
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=REDUCE_LR_FACTOR,
                                          patience=REDUCE_LR_PATIENCE, min_lr=MIN_LEARNING_RATE),
        progress_callback,
    ]
    if progress:
        print(f"training {model.name} ({model.count_params():,} parameters) on {len(train_y)} "
              f"images of {config.image_size} px for at most {config.minutes:g} min", file=sys.stderr)
    started = time.monotonic()
    fitted = model.fit(train_ds, validation_data=eval_ds, epochs=config.max_epochs,
                       callbacks=callbacks, verbose=0)
    train_seconds = time.monotonic() - started

    eval_scores = _predict(model, eval_x)
    threshold = balanced_accuracy_threshold(eval_y, eval_scores)
    test_scores = _predict(model, test_x)
    history = {key: [float(v) for v in values] for key, values in fitted.history.items()}
    history["lr"] = progress_callback.learning_rates
    result = {
        "config": dataclasses.asdict(config),
        "records": os.path.abspath(records_dir),
        "dataset": manifest.get("dataset"),
        "threshold": float(threshold),
        "train_seconds": round(train_seconds, 2),
        "epochs": len(history.get("loss", [])),
        "time_budget_reached": budget.exhausted,
        "train_images": int(len(train_y)),
        "images_seen": int(budget.images_seen),
        "images_per_second": round(budget.images_seen / max(train_seconds, 1e-9), 2),
        "history": history,
        "eval_auc": roc_auc(eval_y, eval_scores),
        "test": {
            "labels": [int(v) for v in test_y],
            "scores": [float(v) for v in test_scores],
            "predictions": [int(v) for v in test_scores >= threshold],
            "patient_ids": list(test_patients),
        },
    }
    if output_dir is not None:
        output_dir = os.fspath(output_dir)
        os.makedirs(output_dir, exist_ok=True)

        def save_model(path: str) -> None:
            with warnings.catch_warnings():  # HDF5 is "legacy" for Keras, but asked for here
                warnings.simplefilter("ignore", UserWarning)
                model.save(path)

        _write_atomically(os.path.join(output_dir, MODEL_NAME), save_model)
        write_json(pathlib.Path(output_dir) / RESULT_NAME, result)
    return result


def _balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> Optional[float]:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.min() == labels.max():
        return None
    sensitivity = predictions[labels == 1].mean()
    specificity = 1.0 - predictions[labels == 0].mean()
    return float((sensitivity + specificity) / 2.0)


def main(argv: Optional[List[str]] = None) -> int:
    """Command line: trains the baseline and prints its test AUC."""
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_cnn", description=__doc__.split("\n")[0])
    defaults = BaselineConfig()
    parser.add_argument("--records", required=True, help="folder written by `histopath ingest`")
    parser.add_argument("--conv-layers", type=int, default=defaults.conv_layers)
    parser.add_argument("--base-filters", type=int, default=defaults.base_filters)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--stain-normalization", action="store_true", help="stain-normalise every image")
    parser.add_argument("--minutes", type=float, default=defaults.minutes, help="wall-clock training budget")
    parser.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--augment", type=json.loads, default=None, metavar="JSON",
                        help="AugmentConfig fields overriding the default augmentation, "
                             'e.g. \'{"brightness": 0.1, "contrast": 0.2}\'')
    parser.add_argument("--output", help="save baseline.h5 and baseline.json here")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    args = parser.parse_args(argv)
    try:
        config = BaselineConfig(conv_layers=args.conv_layers, base_filters=args.base_filters,
                                image_size=args.image_size, batch_size=args.batch_size,
                                stain_normalization=args.stain_normalization,
                                minutes=args.minutes, max_epochs=args.max_epochs, seed=args.seed,
                                augment=AugmentConfig.from_dict({**DEFAULT_AUGMENT.to_dict(), **(args.augment or {})}))
        result = train_and_predict(args.records, config, args.output, progress=not args.quiet)
    except HistopathError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    test = result["test"]
    auc = roc_auc(test["labels"], test["scores"])
    balanced = _balanced_accuracy(np.array(test["labels"]), np.array(test["predictions"]))
    print(f"test AUC {'n/a (one class)' if auc is None else f'{auc:.4f}'}"
          f"  balanced accuracy {'n/a' if balanced is None else f'{balanced:.4f}'}"
          f" at threshold {result['threshold']:.4f} (chosen on eval)"
          f"  [{len(test['labels'])} test images, {len(set(test['patient_ids']))} patients]")
    print(f"{result['epochs']} epochs, {result['train_seconds']:.0f} s of training, "
          f"{result['images_per_second']:.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
