"""`RunReport`: what a run produced, for people — `report.json`, `summary.md`, `roc.png`,
`coverage.png`.

Metrics of every candidate (overall with patient-bootstrap intervals, per magnification,
per patient), how many test patients of each class they rest on, which one won and why,
where it was pushed, what ExampleValidator found, and each candidate's "not sure" band
with its accuracy against coverage on the held-out predictions it was chosen on, and what
each Trainer cost (wall time, CPU time, peak memory).
"""

import json
import time
from typing import Any

from tfx import v1 as tfx
from tfx.types import standard_artifacts

from histopath import fileio
from histopath.components.anomaly_gate import SUMMARY_FILE as ANOMALIES_FILE
from histopath.components.artifacts import IngestReport, RunReportArtifact
from histopath.components.ingest import REPORT_FILE as INGEST_REPORT_FILE
from histopath.components.report_summary import plot_coverage, plot_roc, render_summary
from histopath.components.tfma_results import evaluation_summary
from histopath.components.winner_selection import SELECTION_FILE
from histopath.data.span_store import write_trained

REPORT_JSON, SUMMARY_MD, ROC_PNG, COVERAGE_PNG = "report.json", "summary.md", "roc.png", "coverage.png"


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
    report_dir: tfx.dsl.components.Parameter[str] = "",
) -> None:
    """Writes the report into its artifact and, when `report_dir` is set, there too.

    Without `selection` (the run did not retrain: the training nodes were skipped) the
    report says why. Each candidate's evaluation is read where `SelectWinner` recorded it.
    After a run that trained, the window it trained on is recorded in the span store (the
    next run's "last trained").
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
        summaries = {name: evaluation_summary(candidate["evaluation_uri"])
                     for name, candidate in chosen["candidates"].items()}
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
                               "judged_on": chosen["candidates"][name].get("judged_on"),
                               "test_images": chosen["candidates"][name].get("test_images"),
                               "cross_validation": chosen["candidates"][name].get("cross_validation"),
                               "abstention": chosen["candidates"][name].get("abstention"),
                               "training_resources": chosen["candidates"][name].get("training_resources"),
                               **summary}
                        for name, summary in summaries.items()},
            anomalies=_read_json(anomalies.uri, ANOMALIES_FILE) if anomalies is not None else {},
        )
    fileio.write_json(fileio.join(report.uri, REPORT_JSON), content)
    fileio.write_text(fileio.join(report.uri, SUMMARY_MD), render_summary(content))
    if summaries:
        plot_roc(summaries, fileio.join(report.uri, ROC_PNG))
        plot_coverage(content["candidates"], fileio.join(report.uri, COVERAGE_PNG))
    if content["retrained"] and examples is not None and examples.has_custom_property("span_store"):
        write_trained(examples.get_string_custom_property("span_store"),
                      json.loads(examples.get_string_custom_property("spans")))
    if report_dir:
        publish_report(report.uri, report_dir)


def publish_report(source: str, report_dir: str) -> None:
    """Replaces `report_dir` with a copy of `source`, never leaving a partial report."""
    fileio.replace_tree(source, report_dir, marker=[REPORT_JSON])
