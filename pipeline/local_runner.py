"""Runs the pipeline on this machine: LocalDagRunner + an SQLite ML-Metadata store.

    OUTPUT/records/          TFRecords from `histopath ingest` (reused when unchanged)
    OUTPUT/pipeline_root/    every component's artifacts (the cache)
    OUTPUT/metadata.sqlite   ML Metadata: lineage and cache keys
    OUTPUT/serving/<model>/<version>/   the pushed winner (TF Serving layout)
    OUTPUT/report/           report.json, summary.md, roc.png
    OUTPUT/run_config.json   the exact configuration of the last run
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Any

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
from histopath.errors import ConfigError, DataError, NotBlessedError
from histopath.pipeline.config import PipelineConfig

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def _manifest(folder: pathlib.Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: unreadable ingestion manifest ({error})") from error


def prepare_records(config: PipelineConfig) -> pathlib.Path:
    """Returns the folder of ingested records, ingesting `config.data_dir` if needed.

    `data_dir` may already be an ingested folder (it has a manifest.json); otherwise the
    raw images are ingested into OUTPUT/records, unless a previous run already ingested the
    same source with the same dataset, seed, splits and magnifications.
    """
    if not config.data_dir:
        raise ConfigError("no data folder given (--data)")
    source = pathlib.Path(config.data_dir).resolve()
    if not source.is_dir():
        raise DataError(f"data folder {source} does not exist")
    ingested = _manifest(source)
    if ingested is not None:
        if ingested.get("dataset") != config.dataset:
            raise ConfigError(
                f"{source} holds {ingested.get('dataset')!r} records, not {config.dataset!r}"
            )
        return source

    from histopath.data import ingest as ingest_lib

    wanted = {
        "dataset": config.dataset,
        "source": str(source),
        "seed": config.seed,
        "split_fractions": config.splits,
        "magnifications": list(config.magnifications) or None,
    }
    previous = _manifest(config.records_path)
    if previous is not None and all(previous.get(key) == value for key, value in wanted.items()):
        logger.info("reusing ingested records in %s", config.records_path)
        return config.records_path
    ingest_lib.ingest(
        dataset=config.dataset,
        source=source,
        output=config.records_path,
        splits=config.splits,
        seed=config.seed,
        magnifications=config.magnifications or None,
        overwrite=True,
    )
    return config.records_path


def run_local(config: PipelineConfig) -> dict[str, Any]:
    """Ingests if needed, runs the whole pipeline, and returns the run report.

    Raises:
      NotBlessedError: no candidate passed its thresholds, so nothing was pushed.
    """
    from tfx import v1 as tfx

    from histopath.pipeline.create import create_pipeline

    config.validate()
    config = dataclasses.replace(config, records_dir=str(prepare_records(config)))
    config.output_path.mkdir(parents=True, exist_ok=True)
    config.write(config.output_path / "run_config.json")
    metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(str(config.metadata_path))
    tfx.orchestration.LocalDagRunner().run(create_pipeline(config, metadata))
    report_path = config.report_dir / "report.json"
    report = json.loads(report_path.read_text())
    if not report["pushed"]["pushed"] and not report.get("already_serving"):
        raise NotBlessedError(f"nothing pushed: {report['reason']} (report: {config.report_dir})")
    return report

