"""`create_pipeline()`: the one pipeline definition every runner uses (LocalDagRunner,
InteractiveContext, Kubeflow Pipelines and Vertex AI).

    IngestImages (raw images or slides, spans; or ImportExampleGen for ingested records)
      ── when the ingestion says retrain ──────────────────────────────────────────────
      → StatisticsGen → SchemaGen → CurateSchema → ExampleValidator → AnomalyGate
      → Transform (decode, resize, scale) → a Trainer per model kind ("trainer_<kind>")
      → LatestPushedModel → Evaluator per candidate (test split; thresholds; the pushed
        model as baseline) → SelectWinner → Pusher (whole versions only)
      ──────────────────────────────────────────────────────────────────────────────────
      → RunReport
"""

from __future__ import annotations

import json
from typing import Any

from tfx import v1 as tfx

from histopath import fileio
from histopath.components.anomaly_gate import AnomalyGate
from histopath.components.ingest import IngestImages
from histopath.components.pushed_model import Evaluator, LatestPushedModel
from histopath.components.pusher import Pusher
from histopath.components.run_report import RunReport
from histopath.components.schema_curation import CurateSchema
from histopath.components.winner_selection import SelectWinner
from histopath.data.layouts import SLIDES
from histopath.data.manifest import MANIFEST_NAME
from histopath.pipeline import fingerprint
from histopath.pipeline.config import PipelineConfig, model_settings
from histopath.pipeline.eval_config import EVAL_SPLIT, build_eval_config
from histopath.pipeline.vertex_training import VertexTraining, check_folds

RUN_FN = "histopath.components.trainer.run_fn"
PREPROCESSING_FN = "histopath.models.preprocessing.preprocessing_fn"
INGEST_NODE = "IngestImages"


def uses_ingested_records(config: PipelineConfig) -> bool:
    """Whether `data_dir` holds records of `histopath ingest` (then ImportExampleGen reads
    them) rather than raw images."""
    return bool(config.data_dir) and fileio.exists(fileio.join(config.data_dir, MANIFEST_NAME))


def ingest_settings(config: PipelineConfig) -> dict[str, Any]:
    """The ingestion's settings, as the IngestImages node receives them (slides: with the
    tiles' size in microns and pixels)."""
    settings = {"dataset": config.dataset, "splits": dict(config.splits), "seed": config.seed,
                "magnifications": list(config.magnifications), "bag_size": config.bag_size,
                "window": config.span_window, "min_new_patients": config.min_new_patients,
                "beam_args": list(config.beam_args)}
    if config.dataset == SLIDES:
        settings.update(tile_um=float(config.tile_um), tile_px=int(config.tile_px))
    return settings


def trainer_custom_config(config: PipelineConfig, kind: str) -> dict[str, Any]:
    """Everything a Trainer's run_fn reads, including its code fingerprint."""
    return {**model_settings(config, kind),
            "code_fingerprint": fingerprint.source_fingerprint(fingerprint.trainer_entries(kind))}


def _example_source(config: PipelineConfig, data_fingerprint: str, records: bool):
    if records:
        manifest = fileio.read_json(fileio.join(config.data_dir, MANIFEST_NAME))
        return tfx.components.ImportExampleGen(
            input_base=fileio.absolute(config.data_dir),
            input_config=tfx.proto.Input(splits=[
                tfx.proto.Input.Split(name=name, pattern=f"{name}/*") for name in manifest["splits"]]),
        ), None
    ingest = IngestImages(
        data_root=fileio.absolute(config.data_dir),
        span_store_dir=config.span_store_path,
        settings=json.dumps(ingest_settings(config), sort_keys=True),
        data_fingerprint=data_fingerprint,
    ).with_id(INGEST_NODE)
    return ingest, ingest.outputs["report"]


def _trainer(config: PipelineConfig, kind: str, vertex: tuple[VertexTraining, str] | None, **inputs: Any):
    """The Trainer of candidate `kind`: TFX's, or with `vertex` ((training, image)) the
    Vertex AI extension's, which runs it as a custom job (`pipeline.vertex_training`)."""
    custom_config = trainer_custom_config(config, kind)
    if vertex is None:
        return tfx.components.Trainer(run_fn=RUN_FN, custom_config=custom_config, **inputs)
    training, image = vertex
    check_folds(training, kind, custom_config)
    return tfx.extensions.google_cloud_ai_platform.Trainer(
        run_fn=RUN_FN, custom_config={**custom_config, **training.custom_config(image)}, **inputs)


def _training_components(config: PipelineConfig, examples,
                         vertex: tuple[VertexTraining, str] | None = None) -> dict[str, Any]:
    """Everything between the examples and the report, by id, in execution order."""
    statistics_gen = tfx.components.StatisticsGen(examples=examples)
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    curate_schema = CurateSchema(schema=schema_gen.outputs["schema"])
    schema = curate_schema.outputs["curated_schema"]
    example_validator = tfx.components.ExampleValidator(statistics=statistics_gen.outputs["statistics"], schema=schema)
    anomaly_gate = AnomalyGate(anomalies=example_validator.outputs["anomalies"],
                               stop_on_anomalies=int(config.stop_on_anomalies))
    transform = tfx.components.Transform(
        examples=examples,
        schema=schema,
        preprocessing_fn=PREPROCESSING_FN,
        splits_config=tfx.proto.SplitsConfig(analyze=["train"], transform=["train", "eval"]),
        disable_statistics=True,
        custom_config={
            "image_size": config.image_size,
            "stain_normalization": config.stain_normalization,
            "code_fingerprint": fingerprint.source_fingerprint(fingerprint.TRANSFORM_ENTRY),
        },
    )
    transform.add_upstream_node(anomaly_gate)
    latest_pushed = LatestPushedModel(
        examples=examples, serving_model_dir=fileio.join(config.serving_path, config.model_name))
    components = [statistics_gen, schema_gen, curate_schema, example_validator, anomaly_gate, transform,
                  latest_pushed]
    eval_config = build_eval_config(config)
    candidates = {}
    for kind in config.models:
        trainer = _trainer(config, kind, vertex, examples=transform.outputs["transformed_examples"],
                           transform_graph=transform.outputs["transform_graph"], schema=schema,
                           ).with_id(f"trainer_{kind}")
        evaluator = Evaluator(
            examples=examples,
            model=trainer.outputs["model"],
            baseline_model=latest_pushed.outputs["model"],
            eval_config=eval_config,
            example_splits=[EVAL_SPLIT],
        ).with_id(f"evaluator_{kind}")
        components += [trainer, evaluator]
        candidates[kind] = {"model": trainer.outputs["model"], "evaluation": evaluator.outputs["evaluation"],
                            "blessing": evaluator.outputs["blessing"]}
    select_winner = SelectWinner(candidates, pushed_model=latest_pushed.outputs["model"], rule=config.selection.rule)
    pusher = Pusher(
        model=select_winner.outputs["model"],
        model_blessing=select_winner.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=fileio.join(config.serving_path, config.model_name))),
        custom_config={"version_policy": config.version_policy},
    )
    components += [select_winner, pusher]
    return {component.id: component for component in components}


def create_components(config: PipelineConfig, data_fingerprint: str = "",
                      records: bool | None = None, retrain_gate: bool = True,
                      vertex: tuple[VertexTraining, str] | None = None) -> dict[str, Any]:
    """The pipeline's components by id, in execution order.

    With raw images (`IngestImages`) every node between the ingestion and the report runs
    only when the ingestion says the run retrains (a `tfx.dsl.Cond` on its `retrain`
    property); the report always runs.

    Args:
      config: the run's configuration (already validated).
      data_fingerprint: a hash of the data root's files (`components.ingest.data_fingerprint`),
        so that an unchanged data root is a cache hit; "" (when compiling for a cluster,
        where each run looks at the data itself) makes the ingestion run every time.
      records: `data_dir` holds ingested records (ImportExampleGen) rather than raw
        images; None = look (`uses_ingested_records`).
      retrain_gate: run the training nodes only when the ingestion says so (False: the
        InteractiveContext notebook, which runs the nodes one by one itself).
      vertex: (training, image): the Trainers run as Vertex AI custom jobs of `image`.
    """
    if records is None:
        records = uses_ingested_records(config)
    source, ingest_report = _example_source(config, data_fingerprint, records)
    examples = source.outputs["examples"]
    if ingest_report is not None and retrain_gate:
        with tfx.dsl.Cond(examples.future()[0].custom_property("retrain") == 1):
            training = _training_components(config, examples, vertex)
    else:
        training = _training_components(config, examples, vertex)
    report = RunReport(
        examples=examples,
        ingest_report=ingest_report,
        selection=training["SelectWinner"].outputs["blessing"],
        pushed_model=training["Pusher"].outputs["pushed_model"],
        anomalies=training["AnomalyGate"].outputs["summary"],
        report_dir=config.report_dir,
    )
    return {source.id: source, **training, report.id: report}


def create_pipeline(config: PipelineConfig, metadata_connection_config: Any = None,
                    data_fingerprint: str = "", records: bool | None = None,
                    vertex: tuple[VertexTraining, str] | None = None) -> tfx.dsl.Pipeline:
    """Builds the TFX pipeline for `config` (already validated).

    Args:
      config: the run's configuration.
      metadata_connection_config: ML Metadata connection; None lets the runner decide
        (Kubeflow provides its own).
      data_fingerprint, records, vertex: see `create_components`.
    """
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=list(create_components(config, data_fingerprint, records, vertex=vertex).values()),
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(config.beam_args),
    )
