"""`SelectWinner`: picks the model to push from the candidates' TFMA evaluations.

The rule, in order:
1. only candidates their Evaluator blessed are eligible (they passed the value thresholds
   on the test split and, when a model was pushed before, did not fall more than the
   allowed margin below it);
2. the eligible candidate with the highest image-level AUC wins;
3. ties (AUC within 1e-6) go to the higher balanced accuracy, then to the name;
4. a winner that is the very model pushed last is not pushed again (`already_serving`).

The output blessing names the winner's Trainer model (`current_model_id`).
"""

import json
import os
from typing import Any

import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from histopath.components.pushed_model import SERVING_MODEL_DIR

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


def choose_winner(candidates: dict[str, dict[str, Any]]) -> tuple[str | None, str]:
    """Applies the rule of this module.

    Args:
      candidates: `{name: {"blessed": bool, "metrics": {...}}}`.

    Returns:
      `(winner name or None, a one-sentence reason)`.
    """
    eligible = {name: c for name, c in candidates.items() if c["blessed"]}
    rejected = sorted(set(candidates) - set(eligible))
    if not eligible:
        return None, (
            "no candidate passed its evaluation thresholds ("
            + ", ".join(rejected)
            + "); nothing is pushed"
        )

    def key(name: str) -> tuple[float, float, str]:
        metrics = eligible[name]["metrics"]
        auc = round(metrics.get("auc", float("-inf")), 6)
        return (auc, metrics.get("balanced_accuracy", float("-inf")), name)

    ranked = sorted(eligible, key=key, reverse=True)
    winner = ranked[0]
    auc = eligible[winner]["metrics"].get("auc", float("nan"))
    reason = f"{winner} has the highest test AUC ({auc:.4f}) among blessed candidates"
    if len(ranked) > 1:
        runner_up = ranked[1]
        reason += f" (runner-up {runner_up}: {eligible[runner_up]['metrics'].get('auc', float('nan')):.4f})"
    if rejected:
        reason += "; not blessed: " + ", ".join(rejected)
    return winner, reason


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
) -> None:
    """Compares the candidates, copies the winner to `model` and blesses it."""
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
        }
    winner, reason = choose_winner(candidates)
    already_serving = bool(
        winner and pushed_model is not None and pushed_model.get_int_custom_property("found")
        and pushed_model.get_string_custom_property("trained_in")
        == os.path.join(candidates[winner]["model_uri"], SERVING_MODEL_DIR)
    )
    if already_serving:
        reason += "; it is already the model pushed last, so nothing new is pushed"
    selection = {
        "winner": winner, "reason": reason, "candidates": candidates,
        "already_serving": already_serving,
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
