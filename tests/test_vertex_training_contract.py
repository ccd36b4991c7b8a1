"""`histopath compile --train-on vertex`: the Trainers as TFX's Vertex AI extension Trainer.

The compiled spec is checked; then TFX's own extension executor (`GenericExecutor.Do`,
unchanged) is run with the custom_config the spec carries, against the local contract
server (`contract_server.py`), which parses its `customJobs` request strictly as Vertex's
`CustomJob` and answers as Vertex does. The one thing replaced is where the extension's
gapic client connects: TFX builds it for `REGION-aiplatform.googleapis.com` with no
endpoint option, so the test builds the same client for the contract server (REST
transport, anonymous credentials) and polls without the 30 s wait.
"""

from __future__ import annotations

import json

import pytest
import yaml
from contract_server import ContractServer

from histopath.pipeline import vertex_training
from histopath.pipeline.config import resolve
from histopath.pipeline.create import RUN_FN
from histopath.pipeline.kubeflow_runner import compile_kubeflow

IMAGE = "europe-docker.pkg.dev/histo-project/histopath/pipeline:7"
EXTENSION_EXECUTOR = "tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vertex")
    config = resolve({"dataset": "breakhis", "preset": "demo", "data_dir": "gs://histo-data/breakhis",
                      "output_dir": "gs://histo-runs/weekly", "models": ["cnn"]})
    training = vertex_training.from_options("vertex", "histo-project", "europe-west4", "n1-standard-4", 2)
    path = compile_kubeflow(config, str(folder / "pipeline.yaml"), image=IMAGE, vertex_training=training)
    return yaml.safe_load(open(path))


def _trainer_custom_config(spec: dict) -> dict:
    task = spec["root"]["dag"]["tasks"]["trainer_cnn"]
    component = spec["components"][task["componentRef"]["name"]]
    assert "custom_config" in component["inputDefinitions"]["parameters"]
    # A pipeline parameter (a run may send another preset's settings); the compiled value is its default.
    parameter = task["inputs"]["parameters"]["custom_config"]["componentInputParameter"]
    return json.loads(spec["root"]["inputDefinitions"]["parameters"][parameter]["defaultValue"])


def test_the_compiled_trainer_is_the_extension_with_the_job_spec(compiled):
    container = compiled["deploymentSpec"]["executors"]["trainer_cnn_executor"]["container"]
    assert container["image"] == IMAGE
    assert EXTENSION_EXECUTOR in container["args"]
    config = _trainer_custom_config(compiled)
    assert config["ai_platform_enable_vertex"] is True and config["ai_platform_vertex_region"] == "europe-west4"
    pools = config["ai_platform_training_args"]["job_spec"]["worker_pool_specs"]
    assert [(p["replica_count"], p["container_spec"]["image_uri"], p["machine_spec"]["machine_type"])
            for p in pools] == [(1, IMAGE, "n1-standard-4"), (1, IMAGE, "n1-standard-4")]
    assert config["model_kind"] == "cnn" and config["code_fingerprint"]  # the candidate's own settings stay
    task = compiled["root"]["dag"]["tasks"]["trainer_cnn"]
    assert task["inputs"]["parameters"]["run_fn"]["runtimeValue"]["constant"] == RUN_FN


def test_the_extension_posts_a_custom_job_of_the_image_with_our_run_fn(compiled, monkeypatch):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.aiplatform import gapic
    from tfx.extensions.google_cloud_ai_platform import runner, training_clients
    from tfx.extensions.google_cloud_ai_platform.trainer import executor
    from tfx.types import standard_artifacts

    def artifact(kind, uri):
        made = kind()
        made.uri = uri
        return [made]

    root = "gs://histo-runs/weekly/pipeline_root/trainer_cnn"
    inputs = {"examples": artifact(standard_artifacts.Examples, "gs://histo-runs/transformed_examples"),
              "transform_graph": artifact(standard_artifacts.TransformGraph, "gs://histo-runs/transform_graph"),
              "schema": artifact(standard_artifacts.Schema, "gs://histo-runs/schema")}
    outputs = {"model": artifact(standard_artifacts.Model, f"{root}/model"),
               "model_run": artifact(standard_artifacts.ModelRun, f"{root}/model_run")}
    custom_config = _trainer_custom_config(compiled)
    properties = {"custom_config": json.dumps(custom_config), "run_fn": RUN_FN,
                  "train_args": "{}", "eval_args": "{}"}
    with ContractServer() as server:
        def create_client(self):  # where TFX's client connects: the contract server
            self._client = gapic.JobServiceClient(client_options={"api_endpoint": server.url}, transport="rest",
                                                  credentials=AnonymousCredentials())

        monkeypatch.setattr(training_clients.VertexJobClient, "create_client", create_client)
        monkeypatch.setattr(runner, "_POLLING_INTERVAL_IN_SECONDS", 0)
        executor.GenericExecutor().Do(inputs, outputs, properties)
    assert not server.errors, server.errors
    assert ("POST", "/v1/projects/histo-project/locations/europe-west4/customJobs") in server.calls()
    job = server.bodies("POST", "/v1/projects/histo-project/locations/europe-west4/customJobs")[0]
    pools = job["jobSpec"]["workerPoolSpecs"]
    assert [int(pool["replicaCount"]) for pool in pools] == [1, 1]
    for pool in pools:
        assert pool["containerSpec"]["imageUri"] == IMAGE
        command = pool["containerSpec"]["command"]
        assert command[:3] == ["python", "-m", "tfx.scripts.run_executor"]
        assert command[command.index("--executor_class_path") + 1] == "tfx.components.trainer.executor.GenericExecutor"
        sent = json.loads(command[command.index("--exec-properties") + 1])
        assert sent["run_fn"] == RUN_FN
        assert json.loads(sent["custom_config"])["model_kind"] == "cnn"
        sent_outputs = json.loads(command[command.index("--outputs") + 1])
        assert sent_outputs["model"][0]["artifact"]["uri"] == f"{root}/model"
    # The executor polled the job until Vertex said it succeeded.
    assert [call for call in server.calls() if call[0] == "GET" and "/customJobs/" in call[1]]
