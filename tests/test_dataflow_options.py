"""The Dataflow recipe of docs/kubeflow.md: the Beam options every Beam step of the
compiled pipeline builds in its container, as Dataflow would receive them.

No Dataflow job can run here: this checks the options (parsed by TFX's own container
entrypoint, with BaseBeamExecutor's dependency handling, and by the ingestion's own
builder) with Beam's own validator for the DataflowRunner, whose bucket checks go to the
loopback contract server.
"""

from __future__ import annotations

import json

import pytest
import yaml
from contract_server import ContractServer

from histopath.pipeline.config import resolve
from histopath.pipeline.kubeflow_runner import compile_kubeflow

IMAGE = "registry.example/histopath/pipeline:test"
DATAFLOW_ARGS = ["--runner=DataflowRunner", "--project=histo-project", "--region=europe-west4",
                 "--temp_location=gs://histo-runs/dataflow/tmp", "--staging_location=gs://histo-runs/dataflow/staging",
                 f"--sdk_container_image={IMAGE}-dataflow", "--sdk_location=container",
                 "--machine_type=n2-highmem-8", "--disk_size_gb=200", "--max_num_workers=20",
                 "--service_account_email=dataflow@histo-project.iam.gserviceaccount.com"]


@pytest.fixture
def cloud_storage(monkeypatch):
    """Beam's Dataflow validator looks at the temp and staging buckets (their soft-delete
    policy): Cloud Storage is the loopback contract server, which holds the bucket."""
    with ContractServer() as server:
        server.buckets.add("histo-runs")
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        yield server


def test_every_beam_step_hands_dataflow_the_recipes_options(tmp_path, cloud_storage):
    """The Beam options of every Beam step as its executor builds them in the container
    (TFX's Kubeflow V2 entrypoint parser, then BaseBeamExecutor's dependency flags; the
    ingestion's own options), checked by Beam's own validator for the DataflowRunner."""
    from apache_beam.options import pipeline_options as po
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner
    from tfx.dsl.components.base import base_beam_executor
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor
    from tfx.utils import dependency_utils, import_utils

    from histopath.data import ingest

    config = resolve({"dataset": "breakhis", "data_dir": "gs://histo-data/breakhis", "output_dir": "gs://histo-runs/w",
                      "beam_args": DATAFLOW_ARGS})
    spec = yaml.safe_load(open(compile_kubeflow(config, str(tmp_path / "p.yaml"), image=IMAGE)))
    built = {}
    for name, executor in spec["deploymentSpec"]["executors"].items():
        args = executor["container"]["args"]
        executor_class = import_utils.import_class_by_path(args[args.index("--executor_class_path") + 1])
        if issubclass(executor_class, base_beam_executor.BaseBeamExecutor):
            _, beam_args = kubeflow_v2_run_executor._parse_flags(args)
            # unchanged: with --sdk_container_image TFX ships no ephemeral TFX-only package
            assert dependency_utils.make_beam_dependency_flags(beam_args) == beam_args
            built[name] = po.PipelineOptions(beam_args)
    settings = json.loads(spec["root"]["inputDefinitions"]["parameters"]["ingest_settings"]["defaultValue"])
    built["IngestImages"] = ingest._beam_options(settings["beam_args"], num_workers=1)
    assert {"StatisticsGen_executor", "Transform_executor", "evaluator_mil_executor",
            "evaluator_densenet_executor", "IngestImages"} <= set(built)
    for name, options in built.items():
        assert PipelineOptionsValidator(options, DataflowRunner()).validate() == [], name
        cloud, worker = options.view_as(po.GoogleCloudOptions), options.view_as(po.WorkerOptions)
        assert options.view_as(po.StandardOptions).runner == "DataflowRunner", name
        assert (cloud.project, cloud.region, cloud.temp_location) == (
            "histo-project", "europe-west4", "gs://histo-runs/dataflow/tmp"), name
        assert cloud.service_account_email == "dataflow@histo-project.iam.gserviceaccount.com", name
        assert (worker.sdk_container_image, worker.machine_type, worker.disk_size_gb, worker.max_num_workers) == (
            f"{IMAGE}-dataflow", "n2-highmem-8", 200, 20), name
        assert options.view_as(po.SetupOptions).sdk_location == "container", name
    assert ("GET", "/storage/v1/b/histo-runs") in cloud_storage.calls()  # the validator asked, here
