"""`create_pipeline()`: the one pipeline definition every runner uses.

    ImportExampleGen (patient-level splits from `histopath ingest`)
      → StatisticsGen → SchemaGen → CurateSchema → ExampleValidator → AnomalyGate
      → Transform (decode, resize, scale)
      → Trainer "trainer_densenet" / "trainer_mil"
      → Evaluator per candidate (test split; thresholds; baseline = model pushed last)
      → SelectWinner → Pusher (atomic) → RunReport
"""

from __future__ import annotations

from typing import Any

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts

from histopath.components.anomaly_gate import AnomalyGate
from histopath.components.atomic_pusher import AtomicPusherExecutor
from histopath.components.model_config import DenseNetConfig, MilConfig, TrainingConfig
from histopath.components.run_report import RunReport
from histopath.components.schema_curation import CurateSchema
from histopath.components.winner_selection import SelectWinner
from histopath.pipeline import fingerprint
from histopath.pipeline.config import PipelineConfig
from histopath.pipeline.eval_config import EVAL_SPLIT, build_eval_config

RUN_FNS = {
    "densenet": "histopath.components.trainer.densenet_run_fn",
    "mil": "histopath.components.trainer.mil_run_fn",
}
PREPROCESSING_FN = "histopath.components.preprocessing.preprocessing_fn"
SPLIT_NAMES = ("train", "eval", "test")


def model_configs(config: PipelineConfig) -> dict[str, Any]:
    """The typed model configs of a run, from defaults and the config's overrides."""
    densenet = {"image_size": config.image_size, **config.densenet}
    mil_defaults = MilConfig()
    tile = int(config.mil.get("tile_size", mil_defaults.tile_size))
    mil = {"image_size": max(tile, config.image_size // tile * tile), **config.mil}
    return {
        "densenet": DenseNetConfig.from_dict(densenet),
        "mil": MilConfig.from_dict(mil),
    }


def trainer_custom_config(config: PipelineConfig, kind: str) -> dict[str, Any]:
    """Everything a Trainer's run_fn reads, including its code fingerprint."""
    training = TrainingConfig.from_dict(
        {"seed": config.seed, **config.training, **config.model_training.get(kind, {})})
    return {
        "model": model_configs(config)[kind].to_dict(),
        "training": training.to_dict(),
        "transform_image_size": config.image_size,
        "slide_context_sigma": float(config.slide_context_sigma),
        "dataset": config.dataset,
        "model_name": config.model_name,
        "code_fingerprint": fingerprint.source_fingerprint(fingerprint.TRAINER_MODULES[kind]),
    }


def create_components(config: PipelineConfig, *, with_baseline: bool = True) -> dict[str, Any]:
    """The pipeline's components by id, in execution order.

    Args:
      config: the run's configuration (already validated).
      with_baseline: compare candidates with the model pushed last (a Resolver node);
        the notebook's InteractiveContext runs without it.
    """
    example_gen = tfx.components.ImportExampleGen(
        input_base=str(config.records_path),
        input_config=tfx.proto.Input(
            splits=[tfx.proto.Input.Split(name=name, pattern=f"{name}/*") for name in SPLIT_NAMES]
        ),
    )
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True
    )
    curate_schema = CurateSchema(schema=schema_gen.outputs["schema"])
    schema = curate_schema.outputs["curated_schema"]
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema
    )
    anomaly_gate = AnomalyGate(
        anomalies=example_validator.outputs["anomalies"],
        stop_on_anomalies=int(config.stop_on_anomalies),
    )
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema,
        preprocessing_fn=PREPROCESSING_FN,
        splits_config=tfx.proto.SplitsConfig(analyze=["train"], transform=["train", "eval"]),
        disable_statistics=True,
        custom_config={
            "image_size": config.image_size,
            "stain_normalization": int(config.stain_normalization),
            "code_fingerprint": fingerprint.source_fingerprint(fingerprint.TRANSFORM_MODULES),
        },
    )
    transform.add_upstream_node(anomaly_gate)

    components = [
        example_gen, statistics_gen, schema_gen, curate_schema, example_validator,
        anomaly_gate, transform,
    ]
    baseline_model = None
    if with_baseline:
        # The model pushed last: the latest Trainer model that SelectWinner blessed.
        latest_pushed = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(
                type=standard_artifacts.ModelBlessing,
                producer_component_id="SelectWinner",
                output_key="blessing",
            ),
        ).with_id("latest_pushed_model_resolver")
        components.append(latest_pushed)
        baseline_model = latest_pushed.outputs["model"]

    eval_config = build_eval_config(config)
    selector_inputs = {}
    for kind in config.models:
        trainer = tfx.components.Trainer(
            run_fn=RUN_FNS[kind],
            examples=transform.outputs["transformed_examples"],
            transform_graph=transform.outputs["transform_graph"],
            schema=schema,
            custom_config=trainer_custom_config(config, kind),
        ).with_id(f"trainer_{kind}")
        evaluator = tfx.components.Evaluator(
            examples=example_gen.outputs["examples"],
            model=trainer.outputs["model"],
            baseline_model=baseline_model,
            eval_config=eval_config,
            example_splits=[EVAL_SPLIT],
        ).with_id(f"evaluator_{kind}")
        components += [trainer, evaluator]
        selector_inputs.update({
            f"{kind}_model": trainer.outputs["model"],
            f"{kind}_evaluation": evaluator.outputs["evaluation"],
            f"{kind}_blessing": evaluator.outputs["blessing"],
        })

    if baseline_model is not None:
        selector_inputs["pushed_model"] = baseline_model
    select_winner = SelectWinner(**selector_inputs)
    pusher = tfx.components.Pusher(
        model=select_winner.outputs["model"],
        model_blessing=select_winner.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=str(config.serving_path / config.model_name)
            )
        ),
        custom_config={"version_policy": config.version_policy},
        custom_executor_spec=executor_spec.ExecutorClassSpec(AtomicPusherExecutor),
    )
    report = RunReport(
        selection=select_winner.outputs["blessing"],
        pushed_model=pusher.outputs["pushed_model"],
        anomalies=anomaly_gate.outputs["summary"],
        report_dir=str(config.report_dir),
        **{key: value for key, value in selector_inputs.items() if key.endswith("_evaluation")},
    )
    components += [select_winner, pusher, report]
    return {component.id: component for component in components}


def create_pipeline(config: PipelineConfig, metadata_connection_config: Any = None) -> tfx.dsl.Pipeline:
    """Builds the TFX pipeline for `config` (already validated).

    Args:
      config: the run's configuration.
      metadata_connection_config: ML Metadata connection; None lets the runner decide
        (Kubeflow provides its own).
    """
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=str(config.pipeline_root),
        components=list(create_components(config).values()),
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(config.beam_args),
    )
