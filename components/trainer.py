"""TFX Trainer `run_fn`s: the glue between the pipeline and the two models.

Each Trainer component names one of `densenet_run_fn` / `mil_run_fn` (by module path, so
no user-module wheel is built); the model code itself lives in `densenet.py`, `mil.py`,
`training.py` and `export.py`. The Trainer's `custom_config` carries the model, training
and run settings (see `pipeline.create.trainer_custom_config`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Dict

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx

from histopath import fileio
from histopath.components import cross_validation
from histopath.models import config as model_config_lib
from histopath.evaluation import operating_point
from histopath.models import preprocessing
from histopath.evaluation import slide_context
from histopath.models.export import export_serving_model, make_predictor
from histopath.models.keras_utils import resolve_precision
from histopath.models.training import train_model
from histopath.data import features
from histopath.errors import DataError
from histopath.evaluation.metrics import roc_auc

logger = logging.getLogger(__name__)

# Written by the DenseNet Trainer into its ModelRun artifact (next to the TensorBoard logs).
BACKBONE_WEIGHTS_FILE = "backbone_weights.h5"


# Shuffle buffer of the training examples (serialized records; with the in-memory cache
# this many examples are mixed each epoch, so a split of up to this size is fully reshuffled).
SHUFFLE_BUFFER = 16384


def make_dataset(
    file_pattern: list[str],
    tf_transform_output: tft.TFTransformOutput,
    *,
    batch_size: int,
    transform_size: int,
    model_size: int,
    shuffle: bool,
    seed: int,
    cache: bool = True,
    with_slide_positions: bool = False,
) -> tf.data.Dataset:
    """Transformed examples → `(images float32 (b, s, s, 3), labels int64 (b,))`, one pass.

    Transform writes gzip TFRecords of `tf.train.Example`; they are read with plain
    tf.data (parsed with Transform's output feature spec) so that the serialized records
    can be cached in memory: from the second epoch on nothing is read or decompressed,
    and every epoch is reshuffled.

    Args:
      file_pattern: Transform's split file patterns (`fn_args.train_files`, ...).
      tf_transform_output: the Transform component's output.
      batch_size: examples per batch.
      transform_size: the size Transform resized the images to.
      model_size: the model's input size.
      shuffle: reshuffle each epoch (training split).
      seed: shuffle seed.
      cache: keep the serialized records in memory after the first pass (about the size
        of the uncompressed split; turn off for splits that do not fit in memory).
      with_slide_positions: add a third element, `{name: (b,) tensor}` of the
        `preprocessing.SLIDE_POSITION_FEATURES` (DataError when the examples lack them).
    """
    files = sorted(path for pattern in file_pattern for path in tf.io.gfile.glob(pattern))
    if not files:
        raise DataError(f"no transformed examples match {file_pattern}")
    all_features = tf_transform_output.transformed_feature_spec()
    missing = [name for name in preprocessing.SLIDE_POSITION_FEATURES if name not in all_features]
    if with_slide_positions and missing:
        raise DataError(f"slide context needs the slide positions {', '.join(missing)} in the examples "
                        "(IDC patch records have them)")
    # Only what is used is parsed (training batches need no patient ids or positions).
    used = (preprocessing.TRANSFORMED_IMAGE, preprocessing.TRANSFORMED_LABEL) + (
        preprocessing.SLIDE_POSITION_FEATURES if with_slide_positions else ())
    feature_spec = {name: all_features[name] for name in used}
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE)
    if cache:
        dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)

    def to_model_input(serialized: tf.Tensor) -> tuple:
        batch = tf.io.parse_example(serialized, feature_spec)
        images = preprocessing.transformed_to_model_input(
            batch[preprocessing.TRANSFORMED_IMAGE], transform_size, model_size
        )
        labels = tf.reshape(batch[preprocessing.TRANSFORMED_LABEL], [-1])
        if with_slide_positions:
            return images, labels, {name: tf.reshape(batch[name], [-1])
                                    for name in preprocessing.SLIDE_POSITION_FEATURES}
        return images, labels

    return dataset.batch(batch_size).map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def _predict_probabilities(predict: Callable[[tf.Tensor], Dict[str, tf.Tensor]],
                           dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]:
    """Labels and probabilities of a dataset, from `export.make_predictor` (as served), and
    the slide positions of a `with_slide_positions` dataset ({} otherwise), in one pass."""
    labels, scores, positions = [], [], {}
    for images, batch_labels, *extra in dataset:
        scores.append(predict(tf.cast(images, tf.float32))["probability"].numpy())
        labels.append(batch_labels.numpy().reshape(-1))
        for name, values in (extra[0] if extra else {}).items():
            positions.setdefault(name, []).append(values.numpy())
    return (np.concatenate(labels), np.concatenate(scores),
            {name: np.concatenate(values) for name, values in positions.items()})


def slide_context_info(labels: np.ndarray, scores: np.ndarray, positions: Dict[str, np.ndarray],
                       sigma: float) -> Dict[str, object]:
    """Eval-split slide context: its own decision threshold and AUCs (`model_info`).

    Args:
      labels, scores: the eval images' labels and probabilities (as exported).
      positions: their `preprocessing.SLIDE_POSITION_FEATURES`.
      sigma: the Gaussian's width in patches (`slide_context.smooth_slide_scores`).
    """
    patients = [p.decode("utf-8") if isinstance(p, bytes) else str(p)
                for p in positions[features.PATIENT_ID]]
    return slide_context.eval_split_setting(labels, scores, patients, positions[features.PATCH_X],
                                            positions[features.PATCH_Y], sigma)


def _run(model_kind: str, fn_args: tfx.components.FnArgs) -> None:
    settings = dict(fn_args.custom_config or {})
    training_config = model_config_lib.TrainingConfig.from_dict(settings.get("training", {}))
    if model_kind == "densenet":
        from histopath.models.densenet import build_densenet_model as build_model

        model_config = model_config_lib.DenseNetConfig.from_dict(settings.get("model", {}))
    else:
        from histopath.models.mil import build_mil_model as build_model

        model_config = model_config_lib.MilConfig.from_dict(settings.get("model", {}))
    transform_size = int(settings["transform_image_size"])
    model_size = int(model_config.image_size)
    slide_context_sigma = float(settings.get("slide_context_sigma", 0.0))
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)

    def dataset(files: list[str], shuffle: bool, with_slide_positions: bool = False) -> tf.data.Dataset:
        return make_dataset(
            files,
            tf_transform_output,
            batch_size=training_config.batch_size,
            transform_size=transform_size,
            model_size=model_size,
            shuffle=shuffle,
            seed=training_config.seed,
            cache=training_config.cache_examples,
            with_slide_positions=with_slide_positions,
        )

    cv_settings = dict(settings.get("cross_validation") or {})
    folds, refit = int(cv_settings.get("folds", 0)), bool(cv_settings.get("refit_on_all", False))
    cv_block = None
    started = time.time()
    if folds >= 2:
        # Every train/eval patient predicted by a model that never saw it: what SelectWinner
        # compares, and (with refit_on_all) the threshold of the model trained on them all.
        train_data = cross_validation.load_examples(fn_args.train_files, tf_transform_output, transform_size)
        eval_data = cross_validation.load_examples(fn_args.eval_files, tf_transform_output, transform_size)
        data = cross_validation.PatientExamples(*(np.concatenate([a, b]) for a, b in zip(
            (train_data.images, train_data.labels, train_data.patients),
            (eval_data.images, eval_data.labels, eval_data.patients))))
        cv_trainer = cross_validation.Trainer(build_model, model_config, training_config,
                                              os.path.join(fn_args.model_run_dir, "cross_validation"))
        cv = cross_validation.cross_validate(cv_trainer, data, folds, training_config.seed, refit)
        cv_block = {"folds": len(cv["folds"]), "patients": cv["patients"], "threshold": cv["threshold"],
                    "refit_on_all": refit, "fold_runs": cv["folds"], "warnings": cv["warnings"], **cv["metrics"]}
        fileio.write_json(os.path.join(os.path.dirname(fn_args.serving_model_dir), cross_validation.PREDICTIONS_FILE), {
            "labels": data.labels.tolist(), "patients": data.patients.tolist(),
            "probability": cv["probability"].tolist(), "threshold": cv["threshold"], "warnings": cv["warnings"]})
        logger.info("%s: cross-validated AUC %s over %d patients", model_kind,
                    cv["metrics"]["image_level"]["metrics"]["auc"], cv["patients"])
    if cv_block is not None and refit:
        kept = cross_validation.median_kept_epochs(cv_block["fold_runs"])
        cv_block["refit_epochs"] = kept
        model, history = cv_trainer.fit(data, sorted(set(data.patients)), sorted(set(eval_data.patients)),
                                        cross_validation.fixed_epochs(training_config, kept), "refit")
        threshold = cv_block["threshold"]
        eval_split = {"images": int(len(eval_data.labels)), "auc": None,
                      "note": "the eval patients are in the refit's training data"}
        slide_context_block = None
    else:
        train_ds, eval_ds = dataset(fn_args.train_files, True), dataset(fn_args.eval_files, False)
        tf.keras.utils.set_random_seed(training_config.seed)
        model = build_model(model_config)
        history = train_model(model, train_ds, eval_ds, model_config, training_config, fn_args.model_run_dir)
        # The threshold is chosen on the model's predictions as exported (with test-time
        # augmentation when configured), so it fits what serving computes.
        threshold_ds = dataset(fn_args.eval_files, False, with_slide_positions=True) if slide_context_sigma else eval_ds
        labels, scores, positions = _predict_probabilities(
            make_predictor(model, model_config.test_time_augmentation), threshold_ds)
        threshold = operating_point.balanced_accuracy_threshold(labels, scores)
        logger.info("%s: decision threshold %.4f chosen on %d eval images", model_kind, threshold, len(labels))
        eval_split = {"images": int(len(labels)), "auc": roc_auc(labels, scores)}
        logger.info("%s: eval split %s", model_kind, eval_split)
        slide_context_block = None
        if slide_context_sigma:
            slide_context_block = slide_context_info(labels, scores, positions, slide_context_sigma)
            logger.info("%s: slide context %s", model_kind, slide_context_block)
    train_seconds = time.time() - started

    if model_kind == "densenet":
        from histopath.models.densenet import save_backbone_weights

        # For warm starts: DenseNetConfig(weights=<model_run>/backbone_weights.h5).
        save_backbone_weights(model, os.path.join(fn_args.model_run_dir, BACKBONE_WEIGHTS_FILE))

    model_info = {
        "model_kind": model_kind,
        "model_name": settings.get("model_name", "histopath"),
        "dataset": settings.get("dataset", ""),
        "transform_image_size": transform_size,
        "train_seconds": round(train_seconds, 1),
        "history": history,
        "model_config": model_config.to_dict(),
        "precision": resolve_precision(model_config.mixed_precision),  # what "auto" became here
        "training_config": training_config.to_dict(),
        "eval_split": eval_split,
        "trained_in": fn_args.serving_model_dir,  # the Trainer's output (to recognise it once pushed)
    }
    if slide_context_block is not None:
        model_info["slide_context"] = slide_context_block
    if cv_block is not None:
        model_info["cross_validation"] = cv_block
    export_serving_model(
        model,
        fn_args.serving_model_dir,
        preprocess=preprocessing.TransformedImagePreprocessor(
            tf_transform_output, transform_size, model_size
        ),
        model_info=model_info,
        decision_threshold=threshold,
        test_time_augmentation=model_config.test_time_augmentation,
    )


def densenet_run_fn(fn_args: tfx.components.FnArgs) -> None:
    """TFX Trainer entry point of the DenseNet201 transfer-learning model."""
    _run("densenet", fn_args)


def mil_run_fn(fn_args: tfx.components.FnArgs) -> None:
    """TFX Trainer entry point of the attention-based MIL model."""
    _run("mil", fn_args)
