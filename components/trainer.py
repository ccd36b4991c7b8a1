"""The TFX Trainer's `run_fn`: TFX artifacts in, `models.fit.train_candidate`, export out.

Every Trainer of the pipeline names this one function (by module path, so no user-module
wheel is built); its `custom_config` is a `models.fit.CandidateSettings` (the model kind
among them) plus a code fingerprint (`pipeline.create.trainer_custom_config`).

On one machine the training and the export run in a child process (`models.isolation`):
TensorFlow keeps the memory of every model a process fitted, and under TFX's local runner
the Trainer's process goes on to run the Evaluators and the other Trainers.

When `TF_CONFIG` describes several workers (a Vertex AI custom job's replicas, a Kubeflow
TFJob), every worker trains under `MultiWorkerMirroredStrategy` (`models.distribute`) and
only the chief exports.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_transform as tft
from tfx import v1 as tfx

from histopath.models import distribute, preprocessing, registry
from histopath.models.export import export_serving_model
from histopath.models.fit import CandidateSettings, TrainedCandidate, train_candidate, write_cross_validation
from histopath.models.isolation import run_in_child


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """Trains the candidate its settings name and exports it with its threshold and "not sure" band.

    Writes the serving SavedModel (with `model_info.json`) to `fn_args.serving_model_dir`,
    the cross-validated predictions beside it (when folds ran), and TensorBoard logs and
    the kind's extras to `fn_args.model_run_dir`. In a multi-worker cluster the workers
    other than the chief write their logs to a temporary folder they delete, and do not
    export.

    Raises:
      ConfigError: a multi-worker cluster and patient folds (`distribute.refuse_folds`),
        or a `TF_CONFIG` the Trainer cannot run.
    """
    cluster = distribute.cluster_from_environ()
    if cluster is None:
        run_in_child(train_and_export, dict(fn_args.custom_config or {}), list(fn_args.train_files),
                     list(fn_args.eval_files), fn_args.transform_output, fn_args.model_run_dir,
                     fn_args.serving_model_dir)
        return
    settings = CandidateSettings.from_dict(fn_args.custom_config or {})
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    distribute.refuse_folds(settings.folds, cluster)
    strategy = distribute.make_strategy(cluster)
    per_replica = settings.training_config().batch_size
    distributed = dataclasses.replace(settings, training={
        **settings.training, "batch_size": distribute.global_batch(per_replica, strategy)})
    with distribute.chief_writes(cluster, fn_args.model_run_dir) as (run_dir,):
        with strategy.scope():
            trained = train_candidate(distributed, fn_args.train_files, fn_args.eval_files, tf_transform_output,
                                      run_dir)
    # The trained variables are distributed ones, which a SavedModel signature cannot
    # capture: the chief exports a copy with plain variables. Reading some of them (e.g.
    # BatchNorm's moving statistics) all-reduces, so every worker makes the copy.
    model = distribute.local_copy(trained.model,
                                  lambda: registry.get(settings.model_kind).module().build(settings.model_config()))
    if cluster.is_chief:
        trained = dataclasses.replace(trained, model=model, info={
            **trained.info, "distribution": distribute.describe(cluster, strategy, per_replica)})
        _export(fn_args.serving_model_dir, distributed, trained, tf_transform_output)
    distribute.barrier(strategy)


def train_and_export(custom_config: dict, train_files: list, eval_files: list, transform_output: str,
                     model_run_dir: str, serving_model_dir: str) -> None:
    """One machine's Trainer: `train_candidate`, then the export (`run_fn`'s arguments)."""
    settings = CandidateSettings.from_dict(custom_config)
    tf_transform_output = tft.TFTransformOutput(transform_output)
    trained = train_candidate(settings, train_files, eval_files, tf_transform_output, model_run_dir)
    _export(serving_model_dir, settings, trained, tf_transform_output)


def _export(serving_model_dir: str, settings: CandidateSettings, trained: TrainedCandidate,
            tf_transform_output: tft.TFTransformOutput) -> None:
    """Writes the export and the cross-validated predictions to `serving_model_dir`."""
    write_cross_validation(trained, os.path.dirname(serving_model_dir))
    model_config = settings.model_config()
    export_serving_model(
        trained.model,
        serving_model_dir,
        preprocess=preprocessing.TransformedImagePreprocessor(
            tf_transform_output, settings.transform_size, int(model_config.image_size)),
        # trained_in: the Trainer's output, to recognise the model once pushed.
        model_info={**trained.info, "trained_in": serving_model_dir},
        decision_threshold=trained.threshold,
        test_time_augmentation=model_config.test_time_augmentation,
        abstention_band=trained.info.get("abstention"),
    )
