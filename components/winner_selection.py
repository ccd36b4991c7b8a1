"""`SelectWinner`: picks the model to push among the candidates.

1. Only candidates their Evaluator blessed are eligible (they passed the value thresholds
   on the test split and, when a model was pushed before, did not fall more than the
   allowed margin below it).
2. Among them, by `rule` (`pipeline.config.SelectionConfig`):
   - "cv_simpler_unless_better": the simpler candidate (`model_comparison.SIMPLER_FIRST`)
     unless another's cross-validated AUC over the train and eval patients is higher with
     the paired patient-bootstrap interval of the difference above 0;
   - "cv_auc": the highest cross-validated AUC;
   - "cv_lower_bound": the highest lower bound of that AUC's patient-bootstrap interval;
   - "test_auc": the highest test-split AUC (ties: balanced accuracy, then the name).
   The cv rules read the per-image predictions each Trainer's cross-validation wrote; with
   them the test split only reports.
3. A winner that is the very model pushed last is not pushed again (`already_serving`).

The output blessing names the winner's Trainer model (`current_model_id`).
"""

import json
import os
from typing import Any

import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from histopath import fileio
from histopath.components.pushed_model import SERVING_MODEL_DIR
from histopath.errors import DataError
from histopath.evaluation import model_comparison

SELECTION_FILE = "selection.json"
CANDIDATE_MODEL_NAME = "candidate"  # model_spec name of the model under evaluation
REPORTED_METRICS = (
    "example_count",
    "auc",
    "binary_accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "specificity",
)


def load_candidate_result(evaluation_uri: str) -> Any:
    """The TFMA EvalResult of the candidate in a ModelEvaluation folder.

    With no baseline, TFX's Evaluator drops the baseline spec and TFMA then stores the
    lone model under the empty name; with a baseline it is `CANDIDATE_MODEL_NAME`.
    """
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.writers import eval_config_writer

    eval_config = eval_config_writer.load_eval_run(evaluation_uri)[0]
    specs = eval_config.model_specs if eval_config else []
    name = next((spec.name for spec in specs if not spec.is_baseline), "")
    return tfma.load_eval_result(evaluation_uri, model_name=name or None)


def overall_metrics(evaluation_uri: str) -> dict[str, float]:
    """Reads the overall-slice metrics of the candidate from a ModelEvaluation folder."""
    result = load_candidate_result(evaluation_uri)
    for slice_key, metrics in result.slicing_metrics:
        if slice_key == ():
            flat: dict[str, float] = {}
            for per_output in metrics.values():
                for per_sub_key in per_output.values():
                    for name, value in per_sub_key.items():
                        if isinstance(value, dict) and "doubleValue" in value:
                            flat[name] = float(value["doubleValue"])
            return flat
    return {}


def _test_auc_winner(eligible: dict[str, dict[str, Any]]) -> tuple[str, str]:
    def key(name: str) -> tuple[float, float, str]:
        metrics = eligible[name]["metrics"]
        auc = round(metrics.get("auc", float("-inf")), 6)
        return (auc, metrics.get("balanced_accuracy", float("-inf")), name)

    ranked = sorted(eligible, key=key, reverse=True)
    winner = ranked[0]
    reason = f"{winner} has the highest test AUC ({eligible[winner]['metrics'].get('auc', float('nan')):.4f})"
    if len(ranked) > 1:
        runner_up = ranked[1]
        reason += f" (runner-up {runner_up}: {eligible[runner_up]['metrics'].get('auc', float('nan')):.4f})"
    return winner, reason


def _cross_validated_winner(eligible: dict[str, dict[str, Any]], rule: str) -> tuple[str, str]:
    predictions = {name: candidate.get("cross_validation") for name, candidate in eligible.items()}
    missing = sorted(name for name, value in predictions.items() if value is None)
    if missing:
        raise DataError(f"selection rule {rule} needs cross-validated predictions, which "
                        f"{', '.join(missing)} did not write (set selection.folds)")
    first = next(iter(predictions.values()))
    for name, value in predictions.items():
        if value["patients"] != first["patients"] or value["labels"] != first["labels"]:
            raise DataError(f"the cross-validated predictions of {name} are not of the same images as the others")
    scores = {name: value["probability"] for name, value in predictions.items()}
    choose = {"cv_auc": model_comparison.highest_auc, "cv_lower_bound": model_comparison.highest_lower_bound,
              "cv_simpler_unless_better": model_comparison.simpler_unless_better}[rule]
    winner, reason = choose(first["labels"], first["patients"], scores)
    return winner, (f"{reason}; cross-validated over {len(set(first['patients']))} train and eval patients "
                    "(the test split only reports)")


def choose_winner(candidates: dict[str, dict[str, Any]], rule: str = "cv_lower_bound") -> tuple[str | None, str]:
    """Applies the rule of this module.

    Args:
      candidates: `{name: {"blessed": bool, "metrics": {...}, "cross_validation": {"labels",
        "patients", "probability"} or None}}`.
      rule: "test_auc", "cv_auc", "cv_lower_bound" or "cv_simpler_unless_better".

    Returns:
      `(winner name or None, a one-sentence reason)`.

    Raises:
      DataError: a cv rule without cross-validated predictions of every eligible candidate.
    """
    eligible = {name: c for name, c in candidates.items() if c["blessed"]}
    rejected = sorted(set(candidates) - set(eligible))
    if not eligible:
        return None, (
            "no candidate passed its evaluation thresholds ("
            + ", ".join(rejected)
            + "); nothing is pushed"
        )
    if len(eligible) == 1:
        winner = next(iter(eligible))
        reason = f"{winner} is the only blessed candidate"
    elif rule == "test_auc":
        winner, reason = _test_auc_winner(eligible)
    else:
        winner, reason = _cross_validated_winner(eligible, rule)
    if rejected:
        reason += "; not blessed: " + ", ".join(rejected)
    return winner, reason


def _summary(predictions: dict[str, Any]) -> dict[str, Any]:
    """Images, patients, threshold, the AUC with its patient-bootstrap interval, and how
    the folds were adapted to the cohort ("warnings")."""
    draws = model_comparison.auc_draws(predictions["labels"], predictions["patients"],
                                       {"auc": predictions["probability"]})
    return {"images": len(predictions["labels"]), "patients": len(set(predictions["patients"])),
            "threshold": predictions["threshold"], "auc": float(draws["auc:point"][0]),
            "auc_ci": model_comparison.interval(draws["auc"]), "warnings": predictions.get("warnings", [])}


def _read_cross_validation(model_uri: str) -> dict[str, Any] | None:
    from histopath.components.cross_validation import PREDICTIONS_FILE

    path = fileio.join(model_uri, PREDICTIONS_FILE)
    return fileio.read_json(path) if fileio.exists(path) else None


@tfx.dsl.components.component
def SelectWinner(
    blessing: tfx.dsl.components.OutputArtifact[standard_artifacts.ModelBlessing],
    model: tfx.dsl.components.OutputArtifact[standard_artifacts.Model],
    densenet_model: tfx.dsl.components.InputArtifact[standard_artifacts.Model] = None,
    densenet_evaluation: tfx.dsl.components.InputArtifact[standard_artifacts.ModelEvaluation] = None,
    densenet_blessing: tfx.dsl.components.InputArtifact[standard_artifacts.ModelBlessing] = None,
    mil_model: tfx.dsl.components.InputArtifact[standard_artifacts.Model] = None,
    mil_evaluation: tfx.dsl.components.InputArtifact[standard_artifacts.ModelEvaluation] = None,
    mil_blessing: tfx.dsl.components.InputArtifact[standard_artifacts.ModelBlessing] = None,
    pushed_model: tfx.dsl.components.InputArtifact[standard_artifacts.Model] = None,
    rule: tfx.dsl.components.Parameter[str] = "cv_lower_bound",
) -> None:
    """Compares the candidates by `rule`, copies the winner to `model` and blesses it."""
    inputs = {
        "densenet": (densenet_model, densenet_evaluation, densenet_blessing),
        "mil": (mil_model, mil_evaluation, mil_blessing),
    }
    candidates: dict[str, dict[str, Any]] = {}
    for name, (candidate_model, evaluation, candidate_blessing) in inputs.items():
        if candidate_model is None:
            continue
        candidates[name] = {
            "blessed": bool(candidate_blessing.get_int_custom_property("blessed")),
            "metrics": overall_metrics(evaluation.uri),
            "model_uri": candidate_model.uri,
            "model_id": candidate_model.id,
            "cross_validation": _read_cross_validation(candidate_model.uri),
        }
    winner, reason = choose_winner(candidates, rule)
    for candidate in candidates.values():  # selection.json keeps a summary, not every prediction
        if candidate["cross_validation"] is not None:
            candidate["cross_validation"] = _summary(candidate["cross_validation"])
    already_serving = bool(
        winner and pushed_model is not None and pushed_model.get_int_custom_property("found")
        and pushed_model.get_string_custom_property("trained_in")
        == os.path.join(candidates[winner]["model_uri"], SERVING_MODEL_DIR)
    )
    if already_serving:
        reason += "; it is already the model pushed last, so nothing new is pushed"
    selection = {
        "winner": winner, "reason": reason, "candidates": candidates,
        "already_serving": already_serving, "rule": rule,
    }
    tf.io.gfile.makedirs(blessing.uri)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, SELECTION_FILE), "w") as handle:
        json.dump(selection, handle, indent=2, sort_keys=True)
    blessing.set_string_custom_property("reason", reason)
    if winner is None or already_serving:
        blessing.set_int_custom_property("blessed", 0)
        tf.io.gfile.makedirs(model.uri)
        return
    io_utils.copy_dir(candidates[winner]["model_uri"], model.uri)
    blessing.set_int_custom_property("blessed", 1)
    blessing.set_int_custom_property("current_model_id", candidates[winner]["model_id"])
    blessing.set_string_custom_property("current_model", candidates[winner]["model_uri"])
    blessing.set_string_custom_property("winner", winner)
    model.set_string_custom_property("model_kind", winner)
