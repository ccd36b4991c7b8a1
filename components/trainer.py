"""The TFX Trainer's `run_fn`: TFX artifacts in, `models.fit.train_candidate`, export out.

Every Trainer of the pipeline names this one function (by module path, so no user-module
wheel is built); its `custom_config` is a `models.fit.CandidateSettings` (the model kind
among them) plus a code fingerprint (`pipeline.create.trainer_custom_config`).
"""

from __future__ import annotations

import os

import tensorflow_transform as tft
from tfx import v1 as tfx

from histopath.models import preprocessing
from histopath.models.export import export_serving_model
from histopath.models.fit import CandidateSettings, train_candidate, write_cross_validation


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """Trains the candidate its settings name and exports it with its threshold and "not sure" band.

    Writes the serving SavedModel (with `model_info.json`) to `fn_args.serving_model_dir`,
    the cross-validated predictions beside it (when folds ran), and TensorBoard logs and
    the kind's extras to `fn_args.model_run_dir`.
    """
    settings = CandidateSettings.from_dict(fn_args.custom_config or {})
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    trained = train_candidate(settings, fn_args.train_files, fn_args.eval_files, tf_transform_output,
                              fn_args.model_run_dir)
    write_cross_validation(trained, os.path.dirname(fn_args.serving_model_dir))
    model_config = settings.model_config()
    export_serving_model(
        trained.model,
        fn_args.serving_model_dir,
        preprocess=preprocessing.TransformedImagePreprocessor(
            tf_transform_output, settings.transform_size, int(model_config.image_size)),
        # trained_in: the Trainer's output, to recognise the model once pushed.
        model_info={**trained.info, "trained_in": fn_args.serving_model_dir},
        decision_threshold=trained.threshold,
        test_time_augmentation=model_config.test_time_augmentation,
        abstention_band=trained.info.get("abstention"),
    )
