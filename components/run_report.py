"""`RunReport`: what a run produced, for people — `report.json`, `summary.md`, `roc.png`.

Metrics of every candidate (overall, per magnification, per patient), which one won and
why, where it was pushed, and what ExampleValidator found.
"""

import json
import os
import pathlib
import shutil
import time
import uuid
from typing import Any

import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from histopath.components.anomaly_gate import SUMMARY_FILE as ANOMALIES_FILE
from histopath.components.winner_selection import (
    REPORTED_METRICS,
    SELECTION_FILE,
    load_candidate_result,
)

REPORT_JSON, SUMMARY_MD, ROC_PNG = "report.json", "summary.md", "roc.png"


class RunReportArtifact(tfx.dsl.Artifact):
    """A folder with report.json, summary.md and roc.png."""

    TYPE_NAME = "histopath.RunReport"  # <namespace>.<Name>: the form Kubeflow v2 requires


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


def evaluation_summary(evaluation_uri: str) -> dict[str, Any]:
    """Metrics by slice and the ROC curve of one candidate's TFMA evaluation."""
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
        for per_output in plots.values():
            for per_sub_key in per_output.values():
                matrices = per_sub_key.get("confusionMatrixAtThresholds", {}).get("matrices", [])
                for matrix in matrices:
                    tp, fp = matrix.get("truePositives", 0.0), matrix.get("falsePositives", 0.0)
                    tn, fn = matrix.get("trueNegatives", 0.0), matrix.get("falseNegatives", 0.0)
                    if tp + fn > 0 and fp + tn > 0:
                        roc.append((fp / (fp + tn), tp / (tp + fn)))
    return {"metrics": slices, "roc": sorted(set(roc))}


def plot_roc(curves: dict[str, dict[str, Any]], path: str) -> None:
    """One ROC plot with a curve per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 5), dpi=120)
    for name, summary in curves.items():
        points = [(0.0, 0.0)] + summary["roc"] + [(1.0, 1.0)]
        auc = summary["metrics"]["overall"].get("auc", float("nan"))
        axes.plot([p[0] for p in points], [p[1] for p in points], label=f"{name} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)",
             title="ROC on the test patients", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right")
    figure.tight_layout()
    with tf.io.gfile.GFile(path, "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)


def render_summary(report: dict[str, Any]) -> str:
    """The human-readable summary (Markdown)."""
    lines = [f"# histopath run report — {report['created']}", ""]
    lines.append(f"Winner: **{report['winner'] or 'none'}** — {report['reason']}")
    pushed = report["pushed"]
    if pushed["pushed"]:
        lines.append(f"Pushed: {pushed['destination']} (version {pushed['version']})")
    elif report.get("already_serving"):
        lines.append("Pushed: nothing new (the winner is the model pushed last)")
    else:
        lines.append("Pushed: nothing (no blessed winner)")
    lines += ["", "| model | blessed | images | AUC | accuracy | balanced acc. | precision | recall | specificity |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, candidate in report["candidates"].items():
        m = candidate["metrics"]["overall"]
        cells = [m.get(k) for k in ("example_count", "auc", "binary_accuracy", "balanced_accuracy",
                                     "precision", "recall", "specificity")]
        text = [f"{c:.4f}" if isinstance(c, float) and k else ("-" if c is None else f"{c:.0f}")
                for k, c in enumerate(cells)]
        lines.append(f"| {name} | {'yes' if candidate['blessed'] else 'no'} | " + " | ".join(text) + " |")
    anomalies = report["anomalies"]
    lines += ["", "Data anomalies: " + ("none" if not anomalies else json.dumps(anomalies))]
    return "\n".join(lines) + "\n"


@tfx.dsl.components.component
def RunReport(
    selection: tfx.dsl.components.InputArtifact[standard_artifacts.ModelBlessing],
    pushed_model: tfx.dsl.components.InputArtifact[standard_artifacts.PushedModel],
    anomalies: tfx.dsl.components.InputArtifact[standard_artifacts.ExampleAnomalies],
    report: tfx.dsl.components.OutputArtifact[RunReportArtifact],
    densenet_evaluation: tfx.dsl.components.InputArtifact[standard_artifacts.ModelEvaluation] = None,
    mil_evaluation: tfx.dsl.components.InputArtifact[standard_artifacts.ModelEvaluation] = None,
    report_dir: tfx.dsl.components.Parameter[str] = "",
) -> None:
    """Writes the report into its artifact and, when `report_dir` is set, there too."""
    with tf.io.gfile.GFile(os.path.join(selection.uri, SELECTION_FILE)) as handle:
        chosen = json.load(handle)
    with tf.io.gfile.GFile(os.path.join(anomalies.uri, ANOMALIES_FILE)) as handle:
        found_anomalies = json.load(handle)
    evaluations = {"densenet": densenet_evaluation, "mil": mil_evaluation}
    summaries = {name: evaluation_summary(e.uri) for name, e in evaluations.items() if e is not None}
    content = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "winner": chosen["winner"],
        "reason": chosen["reason"],
        "already_serving": chosen.get("already_serving", False),
        "pushed": {
            "pushed": bool(pushed_model.get_int_custom_property("pushed")),
            "destination": pushed_model.get_string_custom_property("pushed_destination"),
            "version": pushed_model.get_string_custom_property("pushed_version"),
        },
        "candidates": {
            name: {"blessed": chosen["candidates"][name]["blessed"], "metrics": summary["metrics"],
                   "roc": summary["roc"]}
            for name, summary in summaries.items()
        },
        "anomalies": found_anomalies,
    }
    tf.io.gfile.makedirs(report.uri)
    with tf.io.gfile.GFile(os.path.join(report.uri, REPORT_JSON), "w") as handle:
        json.dump(content, handle, indent=2, sort_keys=True)
    with tf.io.gfile.GFile(os.path.join(report.uri, SUMMARY_MD), "w") as handle:
        handle.write(render_summary(content))
    plot_roc(summaries, os.path.join(report.uri, ROC_PNG))
    if report_dir:
        publish_report(report.uri, report_dir)


def publish_report(source: str, report_dir: str) -> None:
    """Replaces `report_dir` with a copy of `source` (copy to a temp name, then rename)."""
    target = pathlib.Path(report_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    shutil.copytree(source, staging)
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, retired)
        os.rename(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, target)
