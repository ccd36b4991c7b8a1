"""Runs the pipeline on this machine: LocalDagRunner and an SQLite ML-Metadata store.

    OUTPUT/pipeline_root/    every component's artifacts (the cache)
    OUTPUT/span_store/       each span's ingested records, kept between runs
    OUTPUT/metadata.sqlite   ML Metadata: lineage and cache keys
    OUTPUT/serving/<model>/<version>/   the pushed winner (TF Serving layout)
    OUTPUT/report/           report.json, summary.md, roc.png
    OUTPUT/logs/<component>.log         everything the components printed
    OUTPUT/run_config.json   the exact configuration of the last run
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Optional

from histopath import fileio
from histopath.console import Console, elapsed
from histopath.errors import ConfigError, DataError, NotBlessedError
from histopath.pipeline.config import PipelineConfig, write_config

logger = logging.getLogger(__name__)


def run_local(config: PipelineConfig, *, verbose: bool = False, console: Optional[Console] = None) -> dict[str, Any]:
    """Runs the whole pipeline and returns the run report.

    Progress goes to the terminal one line per component; the components' output goes to
    `OUTPUT/logs/<component>.log` (`verbose`: everything to the terminal).

    Raises:
      ConfigError / DataError: bad settings or data (before anything runs).
      NotBlessedError: the run trained, but no candidate passed its thresholds.
    """
    check_runnable(config)
    with contextlib.ExitStack() as stack:
        if console is None:
            console = stack.enter_context(Console(config.logs_dir, verbose=verbose, first_log="pipeline"))
        return _run(config, console)


def check_runnable(config: PipelineConfig) -> None:
    """What the local runner needs before anything starts (a local output folder for ML
    Metadata and the logs; a data folder).

    Raises:
      ConfigError: naming the problem.
    """
    config.validate()
    if not config.data_dir:
        raise ConfigError("no data folder given (--data)")
    if fileio.is_uri(config.output_dir):
        raise ConfigError("the local runner keeps ML Metadata in a local SQLite file: --output must be a local "
                          f"folder, got {config.output_dir} (compile for Kubeflow or Vertex to run on a cluster)")


def _run(config: PipelineConfig, console: Console) -> dict[str, Any]:
    from tfx import v1 as tfx

    from histopath.components.ingest import data_fingerprint
    from histopath.data.manifest import load_manifest
    from histopath.pipeline import progress
    from histopath.pipeline.create import create_pipeline, uses_ingested_records

    if uses_ingested_records(config):
        ingested = load_manifest(config.data_dir).get("dataset")
        if ingested != config.dataset:
            raise ConfigError(f"{config.data_dir} holds {ingested!r} records, not {config.dataset!r}")
        fingerprint = ""
    else:
        fingerprint = data_fingerprint(config.data_dir, config.dataset)
    fileio.makedirs(config.output_path)
    write_config(config, fileio.join(config.output_path, "run_config.json"))
    console.line(f"histopath run: {config.dataset} from {config.data_dir}"
                 + (f" (preset {config.preset})" if config.preset else "") + f"; logs in {config.logs_dir}")
    metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)
    handler = progress.attach(console)
    try:
        tfx.orchestration.LocalDagRunner().run(create_pipeline(config, metadata, data_fingerprint=fingerprint))
    except Exception as error:
        handler.failed(error)
        raise
    finally:
        progress.detach(handler)
    report = fileio.read_json(fileio.join(config.report_dir, "report.json"))
    console.line(f"done in {elapsed(console.seconds)}; report in {config.report_dir}")
    if report.get("retrained", True) and not report["pushed"]["pushed"] and not report.get("already_serving"):
        raise NotBlessedError(f"nothing pushed: {report['reason']} (report: {config.report_dir})")
    return report


def read_summary(config: PipelineConfig) -> str:
    """The run report's summary (Markdown), for the terminal."""
    path = fileio.join(config.report_dir, "summary.md")
    if not fileio.exists(path):
        raise DataError(f"{path}: the run wrote no report")
    return fileio.read_text(path)
