"""`train_candidate`: the one public entry point that trains a candidate of any kind.

It owns everything between Transform's examples and a trained model with its decision
threshold: the input pipeline (`datasets`), the training loop (`training.train_model`),
the patient folds and the refit (`cross_validation`) and the eval-split threshold. The
TFX Trainer's `run_fn` (`components.trainer`) reads its artifacts and calls it, then
exports; the benchmarks call it the same way.

    settings = CandidateSettings.from_dict(fn_args.custom_config)
    trained = train_candidate(settings, fn_args.train_files, fn_args.eval_files,
                              tft.TFTransformOutput(fn_args.transform_output), run_dir)
    trained.model, trained.threshold, trained.info, trained.cross_validation
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from histopath import fileio
from histopath.data import features
from histopath.evaluation import operating_point, slide_context
from histopath.evaluation.metrics import roc_auc
from histopath.models import abstention, cross_validation, datasets, registry
from histopath.models.config import CandidateSettings, TrainingConfig
from histopath.models.export import make_predictor
from histopath.models.keras_utils import resolve_precision
from histopath.models.resource_usage import ResourceMonitor
from histopath.models.training import train_model

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainedCandidate:
    """A trained model and what was learnt about it.

    Attributes:
      model: the Keras model to export.
      threshold: its decision threshold (cross-validated, or chosen on the eval split).
      info: what goes into `model_info.json` (history, settings, eval split, ...).
      cross_validation: the per-image cross-validated predictions `SelectWinner` compares
        ({"labels", "patients", "probability", "threshold", "warnings"}); None without folds.
    """

    model: Any
    threshold: float
    info: dict[str, Any]
    cross_validation: Optional[dict[str, Any]] = None


def train_candidate(settings: CandidateSettings, train_files: Sequence[str], eval_files: Sequence[str],
                    tf_transform_output: tft.TFTransformOutput, run_dir: str) -> TrainedCandidate:
    """Trains one candidate on Transform's train and eval splits.

    With `settings.folds` the train and eval patients are cross-validated first
    (`cross_validation.cross_validate`); the exported model is then the refit on all of
    them (`refit_on_all`) or trained on the train split watching the eval split, and the
    threshold comes from the cross-validated predictions (refit) or the eval split.

    Args:
      settings: the candidate's settings.
      train_files, eval_files: Transform's split file patterns.
      tf_transform_output: the Transform component's output.
      run_dir: where TensorBoard logs and the kind's extras go (created).

    Returns:
      The model, its threshold and its `model_info` (with `training_resources`: the wall
      time, CPU time and peak memory of the whole training, `resource_usage`).

    Raises:
      DataError: no examples, or too few patients for any fold.
      ConfigError: settings a kind refuses.
    """
    with ResourceMonitor() as monitor:
        trained = _train(settings, train_files, eval_files, tf_transform_output, run_dir)
    trained.info["training_resources"] = monitor.summary()
    trained.info["train_seconds"] = trained.info["training_resources"]["wall_seconds"]
    return trained


def _train(settings: CandidateSettings, train_files: Sequence[str], eval_files: Sequence[str],
           tf_transform_output: tft.TFTransformOutput, run_dir: str) -> TrainedCandidate:
    """`train_candidate` without the measuring."""
    model_config, training_config = settings.model_config(), settings.training_config()
    cv_block, refit_data = None, None
    if settings.folds >= 2:
        train_data = datasets.load_examples(train_files, tf_transform_output, settings.transform_size)
        eval_data = datasets.load_examples(eval_files, tf_transform_output, settings.transform_size)
        refit_data = (datasets.PatientExamples.join(train_data, eval_data), eval_data)
        cv_block = _cross_validate(settings, model_config, training_config, refit_data[0], run_dir)
    if cv_block is not None and settings.refit_on_all:
        model, history, threshold, eval_split, context, held_out = _refit(
            model_config, training_config, cv_block, *refit_data, run_dir)
    else:
        model, history, threshold, eval_split, context, held_out = _fit_on_splits(
            settings, model_config, training_config, train_files, eval_files, tf_transform_output, run_dir)
    module = registry.get(settings.model_kind).module()
    if hasattr(module, "save_extras"):
        module.save_extras(model, run_dir)
    info = {
        "model_kind": settings.model_kind, "model_name": settings.model_name, "dataset": settings.dataset,
        "transform_size": settings.transform_size,
        "history": history, "model_config": model_config.to_dict(),
        "precision": resolve_precision(model_config.mixed_precision),  # what "auto" became here
        "training_config": training_config.to_dict(), "eval_split": eval_split,
    }
    if context is not None:
        info["slide_context"] = context
    predictions = None
    if cv_block is not None:
        predictions = cv_block.pop("predictions")
        info["cross_validation"] = cv_block
    info["abstention"] = choose_abstention(settings, float(threshold), predictions, held_out)
    if settings.slide_tiling:
        info.update(slide_info(settings, float(threshold), predictions, held_out))
    return TrainedCandidate(model, float(threshold), info, predictions)


def slide_info(settings: CandidateSettings, threshold: float, cv_predictions: Optional[Mapping[str, Any]],
               eval_predictions: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """A slide model's model_info entries: its tiles' scale ("tile_um", "tile_px", "mpp":
    `histopath predict` tiles slides alike) and the slide aggregation chosen on the held-out
    tile predictions (`slide_calling.choose_aggregation`: cross-validated when folds ran,
    else the eval split's)."""
    from histopath.evaluation import slide_calling

    result: dict[str, Any] = dict(settings.slide_tiling)
    source, chosen_on = (cv_predictions, "cv") if cv_predictions is not None else (eval_predictions, "eval")
    if source is not None:
        chosen = slide_calling.choose_aggregation(source["patients"], source["labels"], source["probability"],
                                                  threshold, chosen_on)
        logger.info("%s: slide aggregation %s (%s)", settings.model_kind,
                    slide_calling.describe(chosen["name"], chosen["parameter"]), chosen["reason"])
        result["slide_aggregation"] = chosen
    return result


def _cross_validate(settings: CandidateSettings, model_config: Any, training_config: TrainingConfig,
                    data: datasets.PatientExamples, run_dir: str) -> dict[str, Any]:
    """The folds' summary for `model_info` and, under "predictions", every image's
    cross-validated probability."""
    trainer = cross_validation.Trainer(model_config, training_config, os.path.join(run_dir, "cross_validation"))
    cv = cross_validation.cross_validate(trainer, data, settings.folds, training_config.seed, settings.refit_on_all)
    logger.info("%s: cross-validated AUC %s over %d patients", settings.model_kind,
                cv["metrics"]["image_level"]["metrics"]["auc"], cv["patients"])
    return {"folds": len(cv["folds"]), "patients": cv["patients"], "threshold": cv["threshold"],
            "refit_on_all": settings.refit_on_all, "fold_runs": cv["folds"], "warnings": cv["warnings"],
            **cv["metrics"],
            "predictions": {"labels": data.labels.tolist(), "patients": data.patients.tolist(),
                            "probability": cv["probability"].tolist(), "threshold": cv["threshold"],
                            "warnings": cv["warnings"]}}


def _refit(model_config: Any, training_config: TrainingConfig, cv_block: dict[str, Any],
           data: datasets.PatientExamples, eval_data: datasets.PatientExamples, run_dir: str) -> tuple:
    """The model trained on every train and eval patient for the epochs the folds kept, at
    the cross-validated threshold."""
    kept = cross_validation.median_kept_epochs(cv_block["fold_runs"])
    cv_block["refit_epochs"] = kept
    trainer = cross_validation.Trainer(model_config, training_config, os.path.join(run_dir, "cross_validation"))
    model, history = trainer.fit(data, sorted(set(data.patients)), sorted(set(eval_data.patients)),
                                 cross_validation.fixed_epochs(training_config, kept), "refit")
    eval_split = {"images": int(len(eval_data.labels)), "auc": None,
                  "note": "the eval patients are in the refit's training data"}
    return model, history, cv_block["threshold"], eval_split, None, None


def choose_abstention(settings: CandidateSettings, threshold: float, cv_predictions: Optional[Mapping[str, Any]],
                      eval_predictions: Optional[Mapping[str, Any]]) -> Optional[dict[str, Any]]:
    """The "not sure" band (`abstention.choose_band`) around `threshold`: on the
    cross-validated predictions when folds ran (every train and eval image held out
    once), else on the eval split's; None when neither exists.

    Args:
      settings: the candidate's settings (`abstention` holds the rule's target and
        minimum coverage).
      threshold: the exported model's decision threshold.
      cv_predictions, eval_predictions: {"labels", "patients", "probability"} or None.
    """
    source, chosen_on = (cv_predictions, "cv") if cv_predictions is not None else (eval_predictions, "eval")
    if source is None:
        return None
    config = settings.abstention_config()
    chosen = abstention.choose_band(source["labels"], source["probability"], source["patients"], threshold,
                                    config.target_balanced_accuracy, config.min_coverage, chosen_on)
    logger.info("%s: not-sure band [%s, %s] on %s predictions: coverage %.3f, answered balanced accuracy %.3f%s",
                settings.model_kind, chosen["low"], chosen["high"], chosen_on, chosen["coverage"],
                chosen["balanced_accuracy"], "" if chosen["reached"] else " (target not reached)")
    return chosen


def _fit_on_splits(settings: CandidateSettings, model_config: Any, training_config: TrainingConfig,
                   train_files: Sequence[str], eval_files: Sequence[str],
                   tf_transform_output: tft.TFTransformOutput, run_dir: str) -> tuple:
    """The model trained on the train split watching the eval split, with the threshold
    (and, for IDC, the slide-context setting) chosen on the eval split as exported."""

    def dataset(files: Sequence[str], shuffle: bool, with_slide_positions: bool = False,
                with_patients: bool = False) -> tf.data.Dataset:
        return datasets.make_dataset(
            list(files), tf_transform_output, batch_size=training_config.batch_size,
            transform_size=settings.transform_size, model_size=int(model_config.image_size), shuffle=shuffle,
            seed=training_config.seed, cache=training_config.cache_examples,
            with_slide_positions=with_slide_positions, with_patients=with_patients)

    tf.keras.utils.set_random_seed(training_config.seed)
    model = registry.get(settings.model_kind).module().build(model_config)
    eval_ds = dataset(eval_files, False)
    history = train_model(model, dataset(train_files, True), eval_ds, model_config, training_config, run_dir)
    # The threshold is chosen on the model's predictions as exported (with test-time
    # augmentation when configured), so it fits what serving computes.
    sigma = float(settings.slide_context_sigma)
    labels, scores, positions = _predict_probabilities(
        make_predictor(model, model_config.test_time_augmentation),
        dataset(eval_files, False, with_slide_positions=bool(sigma), with_patients=True))
    threshold = operating_point.balanced_accuracy_threshold(labels, scores)
    eval_split = {"images": int(len(labels)), "auc": roc_auc(labels, scores)}
    logger.info("%s: decision threshold %.4f chosen on %d eval images; %s", settings.model_kind, threshold,
                len(labels), eval_split)
    context = slide_context_info(labels, scores, positions, sigma) if sigma else None
    if context is not None:
        logger.info("%s: slide context %s", settings.model_kind, context)
    held_out = {"labels": labels, "probability": scores, "patients": [
        p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in positions[features.PATIENT_ID]]}
    return model, history, threshold, eval_split, context, held_out


def slide_context_info(labels: np.ndarray, scores: np.ndarray, positions: Mapping[str, np.ndarray],
                       sigma: float) -> dict[str, Any]:
    """Eval-split slide context: its own decision threshold and AUCs (`model_info`).

    Args:
      labels, scores: the eval images' labels and probabilities (as exported).
      positions: their `preprocessing.SLIDE_POSITION_FEATURES`.
      sigma: the Gaussian's width in patches (`slide_context.smooth_slide_scores`).
    """
    patients = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in positions[features.PATIENT_ID]]
    return slide_context.eval_split_setting(labels, scores, patients, positions[features.PATCH_X],
                                            positions[features.PATCH_Y], sigma)


def _predict_probabilities(predict, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray, dict]:
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


def write_cross_validation(trained: TrainedCandidate, model_dir: str) -> None:
    """Leaves the cross-validated predictions beside the exported model (in the Model
    artifact, `cross_validation.PREDICTIONS_FILE`), where `SelectWinner` reads them."""
    if trained.cross_validation is not None:
        fileio.write_json(fileio.join(model_dir, cross_validation.PREDICTIONS_FILE), trained.cross_validation)
