"""The project's own artifact types (beside TFX's standard ones).

Type names follow `<namespace>.<Name>`, the form Kubeflow Pipelines v2 requires; each
class is importable by its module path, which is how a component's container finds the
type of an artifact it reads or writes.
"""

from tfx import v1 as tfx


class IngestReport(tfx.dsl.Artifact):
    """A folder with `ingest_report.json`: the spans, what was ingested or reused, the
    training window and whether the run retrains, skipped files, patients per split."""

    TYPE_NAME = "histopath.IngestReport"


class RunReportArtifact(tfx.dsl.Artifact):
    """A folder with report.json, summary.md and roc.png."""

    TYPE_NAME = "histopath.RunReport"
