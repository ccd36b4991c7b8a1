"""Compiles the same pipeline to a Kubeflow Pipelines (v2) pipeline-spec JSON."""

from __future__ import annotations

import pathlib
import tempfile

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
from histopath.pipeline.config import PipelineConfig

# The image built from pipeline/Dockerfile (TFX's own image + this project).
DEFAULT_IMAGE = "histopath-tfx-pipeline:latest"


def compile_kubeflow(config: PipelineConfig, output_file: str | pathlib.Path, image: str = DEFAULT_IMAGE) -> pathlib.Path:
    """Writes the KubeflowV2DagRunner pipeline spec of `config` to `output_file`.

    Args:
      config: the run configuration; its paths (records, pipeline root, serving dir) must
        be paths the cluster's pods can reach (e.g. `gs://...` or a mounted volume).
      output_file: where the JSON goes (written to a temp name, then renamed).
      image: the container image every component runs in.
    """
    from tfx import v1 as tfx

    from histopath.pipeline.create import create_pipeline

    config.validate()
    output_file = pathlib.Path(output_file).resolve()
    output_file.parent.mkdir(parents=True, exist_ok=True)
    # No metadata connection: Kubeflow provides ML Metadata (and its cache) itself.
    with tempfile.TemporaryDirectory(dir=output_file.parent) as staging:
        runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
            config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
            output_dir=staging,
            output_filename=output_file.name,
        )
        runner.run(create_pipeline(config), write_out=True)
        (pathlib.Path(staging) / output_file.name).replace(output_file)
    return output_file
