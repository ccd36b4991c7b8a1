"""`SelectWinner`: picks the model to push among the candidates.

1. Only candidates their Evaluator blessed are eligible (they passed the value thresholds
   on the test split and, when a model was pushed before, did not fall more than the
   allowed margin below it). A test split whose patients are all of one class (a small
   cohort) has no AUC or balanced accuracy: the same value thresholds are then judged on
   the candidate's cross-validated predictions of the train and eval patients, and the
   reason says so (`judged_on`).
2. Among them, by `rule` (`pipeline.config.SelectionConfig`):
   - "cv_simpler_unless_better": the simpler candidate (`registry.ModelKind.simplicity`)
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

import os
from typing import Any, Mapping, Optional

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import component_spec, standard_artifacts
from tfx.utils import io_utils

from histopath import fileio
from histopath.components.pushed_model import SERVING_MODEL_DIR
from histopath.components.tfma_results import overall_class_counts, overall_metrics, value_thresholds
from histopath.errors import ConfigError, DataError
from histopath.evaluation import model_comparison
from histopath.models import registry

SELECTION_FILE = "selection.json"
DEFAULT_RULE = "cv_lower_bound"
# What each candidate brings: its Trainer's model, its Evaluator's evaluation and blessing.
CANDIDATE_ROLES = {"model": standard_artifacts.Model, "evaluation": standard_artifacts.ModelEvaluation,
                   "blessing": standard_artifacts.ModelBlessing}


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


def choose_winner(candidates: dict[str, dict[str, Any]], rule: str = DEFAULT_RULE) -> tuple[str | None, str]:
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
    judged = "".join(f"; {name} was judged on {c['judged_on']}"
                     for name, c in sorted(candidates.items()) if c.get("judged_on"))
    if not eligible:
        return None, (
            "no candidate passed its evaluation thresholds ("
            + ", ".join(rejected)
            + "); nothing is pushed" + judged
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
    return winner, reason + judged


def judge_on_cross_validation(image_level: Mapping[str, Any], bounds: Mapping[str, float]) -> dict[str, Any]:
    """The Evaluator's value thresholds judged on cross-validated predictions, for a test
    split that holds one class only.

    Args:
      image_level: the image-level scores of the candidate's cross-validated predictions of
        the train and eval patients (`model_info["cross_validation"]["image_level"]`, from
        `cross_validation.summarize`: each image predicted by a model that never saw its
        patient, called at the cross-validated threshold).
      bounds: lower bounds by metric (`tfma_results.value_thresholds`): "auc",
        "balanced_accuracy".

    Returns:
      `{"blessed": bool, "judged_on": a sentence with the figures and the bounds}`.
    """
    if min(image_level["label_counts"].values()) == 0:
        return {"blessed": False, "judged_on": "neither the test split nor the cross-validation holds both classes"}
    figures = {name: float(image_level["metrics"][name]["value"]) for name in ("auc", "balanced_accuracy")}
    shown = {"auc": "AUC", "balanced_accuracy": "balanced accuracy"}
    checks = [f"{shown[name]} {figures[name]:.3f} {'>=' if figures[name] >= bound else '<'} {bound:g}"
              for name, bound in bounds.items() if name in figures]
    passed = all(figures[name] >= bound for name, bound in bounds.items() if name in figures)
    return {"blessed": passed,
            "judged_on": "cross-validation, since the test patients are all of one class: "
                          + ", ".join(checks) + " over the train and eval patients"}


def _summary(predictions: dict[str, Any]) -> dict[str, Any]:
    """Images, patients, threshold, the AUC with its patient-bootstrap interval, and how
    the folds were adapted to the cohort ("warnings")."""
    draws = model_comparison.auc_draws(predictions["labels"], predictions["patients"],
                                       {"auc": predictions["probability"]})
    return {"images": len(predictions["labels"]), "patients": len(set(predictions["patients"])),
            "threshold": predictions["threshold"], "auc": float(draws["auc:point"][0]),
            "auc_ci": model_comparison.interval(draws["auc"]), "warnings": predictions.get("warnings", [])}


def _read_cross_validation(model_uri: str) -> dict[str, Any] | None:
    from histopath.models.cross_validation import PREDICTIONS_FILE

    path = fileio.join(model_uri, PREDICTIONS_FILE)
    return fileio.read_json(path) if fileio.exists(path) else None


def _read_model_info(model_uri: str) -> dict[str, Any]:
    """The exported `model_info.json` of a Trainer's model ({} when there is none)."""
    from histopath.models.exported import MODEL_INFO_PATH

    path = fileio.join(model_uri, SERVING_MODEL_DIR, MODEL_INFO_PATH)
    return fileio.read_json(path) if fileio.exists(path) else {}


def _candidates(input_dict: Mapping[str, list]) -> dict[str, dict[str, Any]]:
    """Each candidate present among the inputs, with what the rule and the report read."""
    candidates: dict[str, dict[str, Any]] = {}
    for kind in registry.names():
        artifacts = {role: input_dict.get(f"{kind}_{role}") or [None] for role in CANDIDATE_ROLES}
        model, evaluation, blessing = (artifacts[role][0] for role in CANDIDATE_ROLES)
        if model is None:
            continue
        candidates[kind] = {
            "blessed": bool(blessing.get_int_custom_property("blessed")),
            "metrics": overall_metrics(evaluation.uri),
            "model_uri": model.uri,
            "model_id": model.id,
            "evaluation_uri": evaluation.uri,
            "cross_validation": _read_cross_validation(model.uri),
            "test_images": overall_class_counts(evaluation.uri),
        }
        info = _read_model_info(model.uri)
        one_class = bool(candidates[kind]["test_images"]) and min(candidates[kind]["test_images"].values()) == 0
        if one_class and not candidates[kind]["blessed"]:
            if "cross_validation" not in info:
                candidates[kind]["judged_on"] = ("nothing: the test patients are all of one class and no "
                                                 "cross-validation ran to judge on instead (selection.folds)")
            else:
                candidates[kind].update(judge_on_cross_validation(info["cross_validation"]["image_level"],
                                                                  value_thresholds(evaluation.uri)))
        # The "not sure" band (operating point and accuracy-against-coverage curve on the
        # held-out predictions) and what training cost (wall time, peak memory).
        candidates[kind].update(abstention=info.get("abstention"), training_resources=info.get("training_resources"))
    return candidates


class SelectWinnerExecutor(base_executor.BaseExecutor):
    """Compares the candidates by `rule`, copies the winner to `model` and blesses it."""

    def Do(self, input_dict: dict[str, list], output_dict: dict[str, list], exec_properties: dict[str, Any]) -> None:
        blessing, model = output_dict["blessing"][0], output_dict["model"][0]
        pushed_model = (input_dict.get("pushed_model") or [None])[0]
        rule = exec_properties.get("rule") or DEFAULT_RULE
        candidates = _candidates(input_dict)
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
        selection = {"winner": winner, "reason": reason, "candidates": candidates,
                     "already_serving": already_serving, "rule": rule}
        fileio.write_json(fileio.join(blessing.uri, SELECTION_FILE), selection)
        blessing.set_string_custom_property("reason", reason)
        if winner is None or already_serving:
            blessing.set_int_custom_property("blessed", 0)
            fileio.makedirs(model.uri)
            return
        io_utils.copy_dir(candidates[winner]["model_uri"], model.uri)
        blessing.set_int_custom_property("blessed", 1)
        blessing.set_int_custom_property("current_model_id", candidates[winner]["model_id"])
        blessing.set_string_custom_property("current_model", candidates[winner]["model_uri"])
        blessing.set_string_custom_property("winner", winner)
        model.set_string_custom_property("model_kind", winner)


class SelectWinnerSpec(component_spec.ComponentSpec):
    """One optional model, evaluation and blessing input per registered kind
    (`<kind>_model`, ...), the model pushed last, and the rule."""

    PARAMETERS = {"rule": component_spec.ExecutionParameter(type=str)}
    INPUTS = {
        "pushed_model": component_spec.ChannelParameter(type=standard_artifacts.Model, optional=True),
        **{f"{kind}_{role}": component_spec.ChannelParameter(type=artifact_type, optional=True)
           for kind in registry.names() for role, artifact_type in CANDIDATE_ROLES.items()},
    }
    OUTPUTS = {"blessing": component_spec.ChannelParameter(type=standard_artifacts.ModelBlessing),
               "model": component_spec.ChannelParameter(type=standard_artifacts.Model)}


class SelectWinner(base_component.BaseComponent):
    """The winner among the candidates (see the module docstring).

    Args:
      candidates: kind -> {"model", "evaluation", "blessing"} channels (a Trainer's model,
        its Evaluator's evaluation and blessing), for any registered kinds.
      pushed_model: the model pushed last (`LatestPushedModel`), or None.
      rule: a `pipeline.config.SELECTION_RULES` rule.
    """

    SPEC_CLASS = SelectWinnerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(SelectWinnerExecutor)

    def __init__(self, candidates: Mapping[str, Mapping[str, types.BaseChannel]],
                 pushed_model: Optional[types.BaseChannel] = None, rule: str = DEFAULT_RULE) -> None:
        for kind, channels in candidates.items():
            registry.get(kind)
            if set(channels) != set(CANDIDATE_ROLES):
                raise ConfigError(f"candidate {kind} needs channels {sorted(CANDIDATE_ROLES)}, got {sorted(channels)}")
        super().__init__(spec=SelectWinnerSpec(
            rule=rule, pushed_model=pushed_model,
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
            model=types.Channel(type=standard_artifacts.Model),
            **{f"{kind}_{role}": channel for kind, channels in candidates.items() for role, channel in channels.items()}))
