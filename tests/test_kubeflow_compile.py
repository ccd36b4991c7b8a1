"""The Kubeflow Pipelines spec compiled from create_pipeline() is complete and valid."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format

from histopath.pipeline.config import PipelineConfig
from histopath.pipeline.create import create_components
from histopath.pipeline.kubeflow_runner import compile_kubeflow

IMAGE = "registry.example/histopath-tfx-pipeline:test"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kfp")
    config = PipelineConfig(
        dataset="breakhis", data_dir="/data/records", records_dir="/data/records",
        output_dir=str(folder / "root"),
    )
    path = compile_kubeflow(config, folder / "pipeline.json", image=IMAGE)
    return config, json.loads(path.read_text())


def test_spec_parses_strictly_as_a_kfp_pipeline_spec(compiled):
    from kfp.pipeline_spec import pipeline_spec_pb2

    _, document = compiled
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.Parse(json.dumps(document["pipelineSpec"]), spec, ignore_unknown_fields=False)
    assert spec.pipeline_info.name == "histopath"
    assert document["runtimeConfig"]["gcsOutputDirectory"]


def test_every_component_executor_and_dependency_is_present(compiled):
    config, document = compiled
    spec = document["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]
    for component_id in create_components(config):
        if component_id == "latest_pushed_model_resolver":  # compiled as two resolver tasks
            assert {f"{component_id}-model-blessing-resolver", f"{component_id}-model-resolver"} <= set(tasks)
            continue
        task = tasks[component_id]
        component = spec["components"][task["componentRef"]["name"]]
        executor = executors[component["executorLabel"]]
        assert executor["container"]["image"] == IMAGE, component_id
        for upstream in task.get("dependentTasks", []):
            assert upstream in tasks, (component_id, upstream)
    assert "AnomalyGate" in tasks["Transform"]["dependentTasks"]  # the anomaly gate blocks Transform
    assert "Transform" in tasks["trainer_mil"]["dependentTasks"]
    assert {"evaluator_densenet", "evaluator_mil"} <= set(tasks["SelectWinner"]["dependentTasks"])
    assert "SelectWinner" in tasks["Pusher"]["dependentTasks"]
    assert "histopath.components.trainer.mil_run_fn" in json.dumps(spec)  # run_fn by module path
