"""Compiles the same pipeline to a Kubeflow Pipelines v2 PipelineSpec (YAML), the form the
KFP UI, `kfp.Client` and Vertex AI Pipelines accept.

TFX's `KubeflowV2DagRunner` builds the spec (PipelineSpec schema 2.1: open-source KFP's
driver reads only that form of constants and parameters); this module then

- records the pipeline root as `defaultPipelineRoot` (Vertex reads it; on open-source KFP
  `histopath submit` passes it with the run);
- turns off the cache of the ingestion task, so that every (scheduled) run looks at the
  data root itself and picks up the spans that arrived since the last;
- makes the data root, the ingestion settings and the serving folder pipeline parameters
  (`run_parameters`), which a run or a schedule overrides without recompiling;
- gives every task CPU, memory (and the Trainers a GPU when asked) and sizes the Beam
  workers to the CPU request (`resources`);
- with `--train-on vertex`, makes the Trainers TFX's Vertex AI extension Trainer, which
  trains in a custom job of the same image, on one or more workers (`vertex_training`);
- checks the result the way `kfp.Client` reads a package (strict `PipelineSpec`) and
  writes it whole (write, then rename).

Every path a pod uses (data root, pipeline root, serving and span-store folders) must be
a URI (`gs://...`) or an absolute path of a volume mounted in the pods.
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

from histopath import fileio
from histopath.errors import ConfigError
from histopath.pipeline import resources as resources_lib
from histopath.pipeline import run_parameters
from histopath.pipeline.config import PipelineConfig
from histopath.pipeline.vertex_training import VertexTraining

# The image scripts/build-pipeline-image.sh builds from IMAGE_DOCKERFILE when IMAGE is not
# set: it exists only in the local Docker, so no cluster can pull it.
IMAGE_DOCKERFILE = "pipeline/docker/pipeline.Dockerfile"
DEFAULT_IMAGE = "histopath/pipeline:latest"
SPEC_SUFFIXES = (".yaml", ".yml")


def check_cluster_paths(config: PipelineConfig) -> None:
    """Refuses paths a pod cannot reach: relative local paths (and an empty data root).

    Raises:
      ConfigError: naming the setting and the path.
    """
    settings = {"--data": config.data_dir, "--pipeline-root": config.output_dir,
                "--serving-dir": config.serving_dir, "span_store_dir": config.span_store_dir}
    if not config.data_dir:
        raise ConfigError("--data is required: the raw image root as the pods see it (gs://... or a mounted path)")
    for flag, path in settings.items():
        if path and not fileio.is_uri(path) and not os.path.isabs(path):
            raise ConfigError(f"{flag} {path!r} is a relative local path, which the cluster's pods cannot reach: "
                              "give a URI (gs://bucket/...) or the absolute path of a volume mounted in the pods")


def pipeline_spec(config: PipelineConfig, image: str | None = None, resources: Sequence[str] = (),
                  vertex_training: VertexTraining | None = None) -> dict[str, Any]:
    """The PipelineSpec of `config` as a dict (checked as `kfp.Client` reads it).

    Args:
      config: the run configuration, its paths as the pods see them.
      image: the container image every component runs in.
      resources: `--resources` overrides of the preset's CPU/memory/GPU (`pipeline.resources`).
      vertex_training: run the Trainers as Vertex AI custom jobs of `image` (None: in their pods).
    """
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx import v1 as tfx

    from histopath.pipeline.create import INGEST_NODE, create_pipeline

    config.validate()
    check_cluster_paths(config)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image or DEFAULT_IMAGE, use_pipeline_spec_2_1=True))
    # No metadata connection and no data fingerprint: the cluster provides ML Metadata,
    # and each run fingerprints the data itself.
    pipeline = create_pipeline(config, records=False, vertex=(
        (vertex_training, image or DEFAULT_IMAGE) if vertex_training is not None else None))
    task_resources = resources_lib.resolve([c.id for c in pipeline.components], config.preset, resources)
    resources_lib.apply(pipeline.components, task_resources)
    job = runner.run(pipeline, write_out=False)
    spec = job["pipelineSpec"]
    root = job.get("runtimeConfig", {}).get("gcsOutputDirectory")
    if root:
        spec["defaultPipelineRoot"] = root
    tasks = spec["root"]["dag"]["tasks"]
    if INGEST_NODE in tasks:
        tasks[INGEST_NODE].setdefault("cachingOptions", {})["enableCache"] = False
    _name_condition_inputs_as_the_task_does(tasks)
    run_parameters.parameterize(spec)
    resources_lib.size_beam_workers(spec, task_resources)
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    return spec


def _name_condition_inputs_as_the_task_does(tasks: dict[str, Any]) -> None:
    """A trigger condition may name an upstream output by TFX's implicit key
    (`_Producer.key`) where the task takes that same output under its own input name
    (TFX 1.16's compiler does this for Python function components); the condition is
    rewritten to the input the task has, so that a driver can evaluate it."""
    for task in tasks.values():
        condition = task.get("triggerPolicy", {}).get("condition")
        inputs = task.get("inputs", {}).get("artifacts", {})
        if not condition:
            continue
        for key in set(re.findall(r"inputs\.artifacts\['([^']+)'\]", condition)) - set(inputs):
            producer, _, output = key.lstrip("_").rpartition(".")
            same = [name for name, value in inputs.items()
                    if value.get("taskOutputArtifact") == {"producerTask": producer, "outputArtifactKey": output}]
            if same:
                condition = condition.replace(f"inputs.artifacts['{key}']", f"inputs.artifacts['{same[0]}']")
        task["triggerPolicy"]["condition"] = condition


def image_warning(image: str | None) -> str | None:
    """A warning when the spec would name the local-only default image, else None."""
    if image and image != DEFAULT_IMAGE:
        return None
    return (f"warning: the tasks run in {DEFAULT_IMAGE}, which no cluster can pull: build the image from "
            f"{IMAGE_DOCKERFILE} with IMAGE=REGISTRY/histopath/pipeline:TAG scripts/build-pipeline-image.sh, push "
            "it, and compile with --image REGISTRY/histopath/pipeline:TAG")


def write_spec(spec: dict[str, Any], path: str) -> str:
    """Writes the spec as YAML (a `# PIPELINE DEFINITION` header, as KFP's compiler writes)."""
    import yaml

    text = f"# PIPELINE DEFINITION\n# Name: {spec['pipelineInfo']['name']}\n" + yaml.safe_dump(spec, sort_keys=True)
    fileio.write_text(path, text)
    return path


def compile_kubeflow(config: PipelineConfig, output_file: str, image: str | None = None,
                     resources: Sequence[str] = (), vertex_training: VertexTraining | None = None) -> str:
    """Writes the PipelineSpec YAML of `config` to `output_file` (.yaml or .yml).

    Raises:
      ConfigError: another file suffix, or a path the pods cannot reach.
    """
    output_file = os.fspath(output_file)
    if not output_file.endswith(SPEC_SUFFIXES):
        raise ConfigError(f"--output {output_file}: a pipeline spec is written as .yaml (what the KFP UI, "
                          "kfp.Client and Vertex AI accept)")
    return write_spec(pipeline_spec(config, image, resources, vertex_training), fileio.absolute(output_file))
