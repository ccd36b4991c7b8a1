"""Reading a candidate's TFMA evaluation: its metrics by slice, per-patient confusion
curves and the patient-bootstrap intervals drawn from them (`SelectWinner`, `RunReport`)."""

from typing import Any, Optional

import numpy as np

from histopath.data import features

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
BOOTSTRAP_RESAMPLES = 1000
FEW_PATIENTS = 5  # fewer test patients of a class than this: the intervals are rough
DECISION_SCORE_THRESHOLD = 0.5  # the exported decision_score is re-centred on the model's threshold
_CELLS = ("trueNegatives", "falsePositives", "falseNegatives", "truePositives")
_METRIC_NAMES = {"AUC": "auc", "BalancedAccuracy": "balanced_accuracy"}  # TFMA class name -> reported name


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


def flat_metrics(metrics: dict[str, Any], names: Optional[tuple[str, ...]] = REPORTED_METRICS) -> dict[str, float]:
    """One slice's metrics as {name: value} (`names` only; None = every scalar)."""
    flat = {}
    for per_output in metrics.values():
        for per_sub_key in per_output.values():
            for name, value in per_sub_key.items():
                if isinstance(value, dict) and "doubleValue" in value and (names is None or name in names):
                    flat[name] = round(float(value["doubleValue"]), 6)
    return flat


def overall_metrics(evaluation_uri: str) -> dict[str, float]:
    """The overall-slice metrics of the candidate in a ModelEvaluation folder."""
    result = load_candidate_result(evaluation_uri)
    return next((flat_metrics(metrics, None) for slice_key, metrics in result.slicing_metrics if slice_key == ()), {})


def value_thresholds(evaluation_uri: str) -> dict[str, float]:
    """The lower bounds the Evaluator judged the overall slice by, e.g.
    `{"auc": 0.7, "balanced_accuracy": 0.6}` (from the evaluation's own EvalConfig)."""
    from tensorflow_model_analysis.writers import eval_config_writer

    eval_config = eval_config_writer.load_eval_run(evaluation_uri)[0]
    bounds: dict[str, float] = {}
    for spec in eval_config.metrics_specs if eval_config else []:
        for metric in spec.metrics:
            for per_slice in metric.per_slice_thresholds:
                value_threshold = per_slice.threshold.value_threshold
                if value_threshold.HasField("lower_bound"):
                    name = _METRIC_NAMES.get(metric.class_name, metric.class_name.lower())
                    bounds[name] = float(value_threshold.lower_bound.value)
    return bounds


def overall_class_counts(evaluation_uri: str) -> dict[str, int]:
    """The test images of each class (`{"benign", "malignant"}`) from the overall confusion
    matrix; {} when the evaluation has none."""
    result = load_candidate_result(evaluation_uri)
    for slice_key, plots in result.plots or []:
        matrices = _matrices(plots) if not slice_key else []
        if matrices:
            cells = {cell: float(matrices[0].get(cell, 0.0)) for cell in _CELLS}
            return {"benign": round(cells["trueNegatives"] + cells["falsePositives"]),
                    "malignant": round(cells["truePositives"] + cells["falseNegatives"])}
    return {}


def _matrices(plots: dict[str, Any]) -> list[dict[str, Any]]:
    for per_output in plots.values():
        for per_sub_key in per_output.values():
            matrices = per_sub_key.get("confusionMatrixAtThresholds", {}).get("matrices", [])
            if matrices:
                return matrices
    return []


def patient_curves(slice_plots) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each test patient's confusion counts at every threshold of TFMA's confusion-matrix plot.

    Args:
      slice_plots: TFMA's `(slice_key, plots)` pairs.

    Returns:
      (patient ids, curves `[P, T, 4]` of (TN, FP, FN, TP), thresholds `[T]`).
    """
    patients, curves, thresholds = [], [], None
    for slice_key, plots in slice_plots or []:
        if len(slice_key) != 1 or slice_key[0][0] != features.PATIENT_ID:
            continue
        matrices = _matrices(plots)
        if not matrices:
            continue
        value = slice_key[0][1]
        patients.append(value.decode() if isinstance(value, bytes) else str(value))
        curves.append([[float(matrix.get(cell, 0.0)) for cell in _CELLS] for matrix in matrices])
        thresholds = np.array([float(matrix.get("threshold", 0.0)) for matrix in matrices])
    if not patients:
        return [], np.zeros((0, 0, 4)), np.zeros(0)
    return patients, np.array(curves), thresholds


def patient_intervals(slice_plots, seed: int = 0) -> dict[str, Any]:
    """Patient-bootstrap intervals of the overall metrics, the test patients per class and
    warnings, from the per-patient confusion curves (`bootstrap.curve_bootstrap_metrics`)."""
    from histopath.evaluation import bootstrap

    patients, curves, thresholds = patient_curves(slice_plots)
    if not patients:
        return {"intervals": {}, "test_patients": {"benign": 0, "malignant": 0},
                "warnings": ["no per-patient results: no intervals"]}
    malignant = int(np.sum(curves[:, 0, 2] + curves[:, 0, 3] > 0))  # any malignant image
    counts = {"benign": len(patients) - malignant, "malignant": malignant}
    below = np.flatnonzero(thresholds < DECISION_SCORE_THRESHOLD)
    decision_index = int(below[-1]) if below.size else 0
    weights = bootstrap.patient_bootstrap_weights(len(patients), BOOTSTRAP_RESAMPLES, seed)
    intervals = bootstrap.curve_bootstrap_metrics(curves, decision_index, weights)
    warnings = []
    if min(counts.values()) < FEW_PATIENTS:
        warnings.append(f"only {counts['benign']} benign and {counts['malignant']} malignant test patients "
                        f"(fewer than {FEW_PATIENTS} of a class): the intervals are rough")
    return {"intervals": intervals, "test_patients": counts, "warnings": warnings}


def evaluation_summary(evaluation_uri: str) -> dict[str, Any]:
    """Metrics by slice, patient-bootstrap intervals and the ROC curve of one candidate's
    TFMA evaluation."""
    result = load_candidate_result(evaluation_uri)
    slices: dict[str, dict[str, dict[str, float]]] = {"overall": {}, "patient_id": {}, "magnification": {}}
    for slice_key, metrics in result.slicing_metrics:
        flat = flat_metrics(metrics)
        if not slice_key:
            slices["overall"] = flat
        else:
            feature, value = slice_key[0]
            slices.setdefault(feature, {})[str(value.decode() if isinstance(value, bytes) else value)] = flat
    roc = []
    for slice_key, plots in result.plots or []:
        if slice_key:
            continue
        for matrix in _matrices(plots):
            tp, fp = matrix.get("truePositives", 0.0), matrix.get("falsePositives", 0.0)
            tn, fn = matrix.get("trueNegatives", 0.0), matrix.get("falseNegatives", 0.0)
            if tp + fn > 0 and fp + tn > 0:
                roc.append((fp / (fp + tn), tp / (tp + fn)))
    return {"metrics": slices, "roc": sorted(set(roc)), **patient_intervals(result.plots)}


