"""`RunReport`: what a run produced, for people — `report.json`, `summary.md`, `roc.png`.

Metrics of every candidate (overall with patient-bootstrap intervals, per magnification,
per patient), how many test patients of each class they rest on, which one won and why,
where it was pushed, and what ExampleValidator found.
"""

import json
import time
from typing import Any

import numpy as np
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from histopath import fileio
from histopath.components.anomaly_gate import SUMMARY_FILE as ANOMALIES_FILE
from histopath.components.artifacts import IngestReport, RunReportArtifact
from histopath.components.ingest import REPORT_FILE as INGEST_REPORT_FILE
from histopath.data import features
from histopath.data.span_store import write_trained
from histopath.components.winner_selection import (
    REPORTED_METRICS,
    SELECTION_FILE,
    load_candidate_result,
)

REPORT_JSON, SUMMARY_MD, ROC_PNG = "report.json", "summary.md", "roc.png"
BOOTSTRAP_RESAMPLES = 1000
FEW_PATIENTS = 5  # fewer test patients of a class than this: the intervals are rough
DECISION_SCORE_THRESHOLD = 0.5  # the exported decision_score is re-centred on the model's threshold
_CELLS = ("trueNegatives", "falsePositives", "falseNegatives", "truePositives")


def _flatten(metrics: dict[str, Any]) -> dict[str, float]:
    flat = {}
    for per_output in metrics.values():
        for per_sub_key in per_output.values():
            for name, value in per_sub_key.items():
                if isinstance(value, dict) and "doubleValue" in value and name in REPORTED_METRICS:
                    flat[name] = round(float(value["doubleValue"]), 6)
    return flat


def _slice_name(slice_key: tuple) -> str:
    return "overall" if not slice_key else ",".join(f"{k}={v}" for k, v in slice_key)


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
        flat = _flatten(metrics)
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


def plot_roc(curves: dict[str, dict[str, Any]], path: str) -> None:
    """One ROC plot with a curve per candidate (`evaluation.plots`)."""
    from histopath.evaluation import plots

    roc_curves = {}
    for name, summary in curves.items():
        points = [(0.0, 0.0)] + [tuple(point) for point in summary["roc"]] + [(1.0, 1.0)]
        roc_curves[name] = plots.RocCurve(
            fpr=np.array([p[0] for p in points]), tpr=np.array([p[1] for p in points]),
            auc=summary["metrics"]["overall"].get("auc"),
            n_items=int(summary["metrics"]["overall"].get("example_count", 0)))
    plots.plot_roc(roc_curves, path, title="ROC on the test patients")


def render_summary(report: dict[str, Any]) -> str:
    """The human-readable summary (Markdown)."""
    lines = [f"# histopath run report — {report['created']}", ""]
    data = report.get("data")
    if data:
        lines += _data_lines(data) + [""]
    if not report.get("retrained", True):
        lines.append(f"No retraining: {report['reason']}. Nothing was pushed.")
        return "\n".join(lines) + "\n"
    lines.append(f"Winner: **{report['winner'] or 'none'}** — {report['reason']}")
    pushed = report["pushed"]
    if pushed["pushed"]:
        lines.append(f"Pushed: {pushed['destination']} (version {pushed['version']})")
    elif report.get("already_serving"):
        lines.append("Pushed: nothing new (the winner is the model pushed last)")
    else:
        lines.append("Pushed: nothing (no blessed winner)")
    lines += ["", "| model | blessed | test patients (benign / malignant) | images | AUC | balanced acc. | "
              "sensitivity | specificity |", "|---|---|---|---|---|---|---|---|"]
    warnings = []
    for name, candidate in report["candidates"].items():
        m, intervals = candidate["metrics"]["overall"], candidate.get("intervals", {})
        patients = candidate.get("test_patients", {})
        cells = [_with_interval(m.get(key), intervals.get(metric))
                 for key, metric in (("auc", "auc"), ("balanced_accuracy", "balanced_accuracy"),
                                     ("recall", "sensitivity"), ("specificity", "specificity"))]
        count = m.get("example_count")
        lines.append(f"| {name} | {'yes' if candidate['blessed'] else 'no'} | "
                     f"{patients.get('benign', '-')} / {patients.get('malignant', '-')} | "
                     f"{'-' if count is None else f'{count:.0f}'} | " + " | ".join(cells) + " |")
        warnings += candidate.get("warnings", [])  # the candidates share the test patients
    lines += ["", "Figures on the test patients with 95 % patient-bootstrap intervals."]
    validated = {name: c["cross_validation"] for name, c in report["candidates"].items() if c.get("cross_validation")}
    if validated:
        lines += ["", f"Chosen by {report.get('rule', 'test_auc')} on the cross-validated predictions of the train "
                  "and eval patients:", "", "| model | patients | images | cross-validated AUC |", "|---|---|---|---|"]
        for name, cv in validated.items():
            interval = cv.get("auc_ci")
            lines.append(f"| {name} | {cv['patients']} | {cv['images']} | {cv['auc']:.3f}"
                         + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "") + " |")
            warnings += [f"{name} cross-validation: {warning}" for warning in cv.get("warnings", [])]
    lines += [f"Warning: {warning}" for warning in dict.fromkeys(warnings)]
    anomalies = report["anomalies"]
    lines += ["", "Data anomalies: " + ("none" if not anomalies else json.dumps(anomalies))]
    return "\n".join(lines) + "\n"


def _with_interval(value: float | None, interval: dict[str, Any] | None) -> str:
    if value is None:
        return "-"
    if interval and interval.get("ci_low") is not None:
        return f"{value:.3f} [{interval['ci_low']:.3f}, {interval['ci_high']:.3f}]"
    return f"{value:.3f}"


def _data_lines(data: dict[str, Any]) -> list[str]:
    """Spans, what was new, and the patients per split with their class balance."""
    lines = ["| span | images | new this run |", "|---|---|---|"]
    for span in data["window"]:
        lines.append(f"| {span['span']} | {span['examples']} | {'yes' if span['ingested_now'] else 'no'} |")
    skipped = sum(len(span["skipped"]) for span in data["window"])
    if skipped:
        lines += ["", f"Skipped files: {skipped} (listed in ingest_report.json)"]
    lines += ["", "| split | patients (benign / malignant) | images (benign / malignant) | malignant share vs all |",
              "|---|---|---|---|"]
    for name, entry in data["balance"].items():
        difference = entry["difference_from_all"]["malignant_share_of_images"]
        lines.append(f"| {name} | {entry['patients']['benign']} / {entry['patients']['malignant']} | "
                     f"{entry['images']['benign']} / {entry['images']['malignant']} | "
                     + ("-" if difference is None else f"{difference:+.3f}") + " |")
    return lines


def _read_json(folder: str, name: str) -> Any:
    return fileio.read_json(fileio.join(folder, name))


@tfx.dsl.components.component
def RunReport(
    report: tfx.dsl.components.OutputArtifact[RunReportArtifact],
    examples: tfx.dsl.components.InputArtifact[standard_artifacts.Examples] = None,
    ingest_report: tfx.dsl.components.InputArtifact[IngestReport] = None,
    selection: tfx.dsl.components.InputArtifact[standard_artifacts.ModelBlessing] = None,
    pushed_model: tfx.dsl.components.InputArtifact[standard_artifacts.PushedModel] = None,
    anomalies: tfx.dsl.components.InputArtifact[standard_artifacts.ExampleAnomalies] = None,
    densenet_evaluation: tfx.dsl.components.InputArtifact[standard_artifacts.ModelEvaluation] = None,
    mil_evaluation: tfx.dsl.components.InputArtifact[standard_artifacts.ModelEvaluation] = None,
    report_dir: tfx.dsl.components.Parameter[str] = "",
) -> None:
    """Writes the report into its artifact and, when `report_dir` is set, there too.

    Without `selection` (the run did not retrain: the training nodes were skipped) the
    report says why. After a run that trained, the window it trained on is recorded in
    the span store (the next run's "last trained").
    """
    data = _read_json(ingest_report.uri, INGEST_REPORT_FILE) if ingest_report is not None else None
    content: dict[str, Any] = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "data": data}
    if selection is None:
        reason = data["plan"]["reason"] if data else "the training nodes did not run"
        content.update(retrained=False, winner=None, reason=reason, already_serving=False, candidates={},
                       anomalies={}, pushed={"pushed": False, "destination": "", "version": ""})
        summaries = {}
    else:
        chosen = _read_json(selection.uri, SELECTION_FILE)
        evaluations = {"densenet": densenet_evaluation, "mil": mil_evaluation}
        summaries = {name: evaluation_summary(e.uri) for name, e in evaluations.items() if e is not None}
        content.update(
            retrained=True, winner=chosen["winner"], reason=chosen["reason"],
            already_serving=chosen.get("already_serving", False),
            pushed={
                "pushed": bool(pushed_model is not None and pushed_model.get_int_custom_property("pushed")),
                "destination": pushed_model.get_string_custom_property("pushed_destination") if pushed_model else "",
                "version": pushed_model.get_string_custom_property("pushed_version") if pushed_model else "",
            },
            rule=chosen.get("rule", "test_auc"),
            candidates={name: {"blessed": chosen["candidates"][name]["blessed"],
                               "cross_validation": chosen["candidates"][name].get("cross_validation"), **summary}
                        for name, summary in summaries.items()},
            anomalies=_read_json(anomalies.uri, ANOMALIES_FILE) if anomalies is not None else {},
        )
    fileio.write_json(fileio.join(report.uri, REPORT_JSON), content)
    fileio.write_text(fileio.join(report.uri, SUMMARY_MD), render_summary(content))
    if summaries:
        plot_roc(summaries, fileio.join(report.uri, ROC_PNG))
    if content["retrained"] and examples is not None and examples.has_custom_property("span_store"):
        write_trained(examples.get_string_custom_property("span_store"),
                      json.loads(examples.get_string_custom_property("spans")))
    if report_dir:
        publish_report(report.uri, report_dir)


def publish_report(source: str, report_dir: str) -> None:
    """Replaces `report_dir` with a copy of `source`, never leaving a partial report."""
    fileio.replace_tree(source, report_dir, marker=[REPORT_JSON])
