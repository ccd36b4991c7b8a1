"""`histopath compile`: a PipelineSpec YAML that the kfp SDK's own readers load, whose every
path stays what the cluster gives, with no node open-source KFP cannot run."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from histopath import cli
from histopath.errors import ConfigError
from histopath.pipeline.config import resolve
from histopath.pipeline.create import INGEST_NODE, create_components
from histopath.pipeline.kubeflow_runner import compile_kubeflow

IMAGE = "registry.example/histopath/pipeline:test"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kfp")
    config = resolve({"dataset": "breakhis", "data_dir": "gs://histo-data/breakhis", "output_dir": "gs://histo-runs/weekly",
                      "serving_dir": "gs://histo-models/serving"})
    path = compile_kubeflow(config, str(folder / "pipeline.yaml"), image=IMAGE)
    return config, path, yaml.safe_load(open(path))


def test_the_kfp_sdk_loads_the_spec_as_kfp_client_and_the_ui_do(compiled):
    from google.protobuf import json_format
    from kfp import components
    from kfp.client import client as kfp_client
    from kfp.pipeline_spec import pipeline_spec_pb2

    _, path, spec = compiled
    assert open(path).readline().startswith("# PIPELINE DEFINITION")
    component = components.load_component_from_file(path)
    assert component.name == "histopath"
    assert component.pipeline_spec.default_pipeline_root == "gs://histo-runs/weekly/pipeline_root"
    # What kfp.Client.upload_pipeline / create_run_from_pipeline_package read the file with.
    uploaded = kfp_client._extract_pipeline_yaml(path)  # (a private reader: the one the public calls use)
    assert uploaded.pipeline_spec.pipeline_info.name == "histopath"
    strict = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    assert strict.schema_version == "2.1.0"  # what open-source KFP accepts


def test_every_path_stays_a_cluster_uri(compiled):
    _, path, _ = compiled
    text = open(path).read()
    for uri in ("gs://histo-data/breakhis", "gs://histo-runs/weekly/span_store", "gs://histo-models/serving/histopath",
                "gs://histo-runs/weekly/report", "gs://histo-runs/weekly/pipeline_root"):
        assert uri in text, uri
    assert "gs:/histo" not in text.replace("gs://histo", "")  # no URI was resolved as a local path
    assert "/work/" not in text and "/tmp/" not in text


def test_first_node_ingests_raw_images_and_every_node_runs_on_open_source_kfp(compiled):
    config, _, spec = compiled
    tasks = spec["root"]["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]
    assert set(tasks) == set(create_components(config, records=False))
    for name, task in tasks.items():
        executor = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]
        assert list(executor) == ["container"], name  # no resolver or importer executors
        assert executor["container"]["image"] == IMAGE
        for upstream in task.get("dependentTasks", []):
            assert upstream in tasks
    ingest = tasks[INGEST_NODE]
    assert "dependentTasks" not in ingest and "inputs" in ingest
    assert ingest["cachingOptions"]["enableCache"] is False  # every scheduled run looks at the data root
    assert "IngestImages_Executor" in json.dumps(executors[f"{INGEST_NODE}_executor"])
    assert "retrain" in tasks["trainer_mil"]["triggerPolicy"]["condition"]
    assert "LatestPushedModel" in tasks["evaluator_mil"]["dependentTasks"]
    assert {"evaluator_densenet", "evaluator_mil"} <= set(tasks["SelectWinner"]["dependentTasks"])
    assert "histopath.components.trainer.run_fn" in json.dumps(spec)  # run_fn by module path


def test_custom_artifact_types_resolve_by_their_type_names(compiled):
    from tfx.utils import import_utils

    _, _, spec = compiled
    titles = set()
    for component in spec["components"].values():
        for side in ("inputDefinitions", "outputDefinitions"):
            for artifact in component.get(side, {}).get("artifacts", {}).values():
                titles.add(yaml.safe_load(artifact["artifactType"]["instanceSchema"])["title"])
    custom = sorted(t for t in titles if not t.startswith("tfx."))
    assert custom == ["histopath.IngestReport", "histopath.RunReport"]
    for title in custom:  # how TFX's Kubeflow entrypoint finds the class in the container
        assert import_utils.import_class_by_path(title).TYPE_NAME == title


@pytest.mark.parametrize("args, message", [
    (["--pipeline-root", "relative/root"], "--pipeline-root 'relative/root' is a relative local path"),
    (["--pipeline-root", "gs://b/r", "--serving-dir", "serving"], "--serving-dir 'serving' is a relative local path"),
    (["--pipeline-root", "gs://b/r", "--data", "data"], "--data 'data' is a relative local path"),
    (["--pipeline-root", "gs://b/r", "--output", "{tmp}/pipeline.json"], "is written as .yaml"),
])
def test_paths_a_cluster_cannot_reach_are_refused_before_anything_is_written(tmp_path, capsys, args, message):
    argv = ["compile", "--dataset", "breakhis", "--data", "gs://d/slides", "--output", str(tmp_path / "p.yaml")]
    argv += [a.format(tmp=tmp_path) for a in args]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_compile_needs_a_data_root():
    from histopath.pipeline.kubeflow_runner import check_cluster_paths

    with pytest.raises(ConfigError, match="--data is required"):
        check_cluster_paths(resolve({"output_dir": "gs://b/r"}))


def test_every_trigger_condition_names_an_input_of_its_task(compiled):
    import re

    _, _, spec = compiled
    conditions = 0
    for name, task in spec["root"]["dag"]["tasks"].items():
        condition = task.get("triggerPolicy", {}).get("condition")
        if condition:
            conditions += 1
            for key in re.findall(r"inputs\.artifacts\['([^']+)'\]", condition):
                assert key in task["inputs"]["artifacts"], (name, key)
    assert conditions == 13  # every node between the ingestion and the report


def test_run_time_settings_are_pipeline_parameters_with_the_compiled_defaults(compiled):
    from kfp import components

    config, path, spec = compiled
    declared = spec["root"]["inputDefinitions"]["parameters"]
    assert set(declared) == {"data_root", "ingest_settings", "serving_model_dir", "push_destination",
                             "transform_settings", "selection_rule", "trainer_densenet_settings",
                             "trainer_mil_settings", "evaluator_densenet_eval_config", "evaluator_mil_eval_config"}
    assert all(d["parameterType"] == "STRING" and d["isOptional"] for d in declared.values())
    assert declared["data_root"]["defaultValue"] == "gs://histo-data/breakhis"
    assert declared["serving_model_dir"]["defaultValue"] == "gs://histo-models/serving/histopath"
    assert json.loads(declared["ingest_settings"]["defaultValue"])["window"] == config.span_window
    tasks = spec["root"]["dag"]["tasks"]
    reads = {(task, key): value["componentInputParameter"] for task, t in tasks.items()
             for key, value in t["inputs"].get("parameters", {}).items() if "componentInputParameter" in value}
    assert reads == {("IngestImages", "data_root"): "data_root", ("IngestImages", "settings"): "ingest_settings",
                     ("LatestPushedModel", "serving_model_dir"): "serving_model_dir",
                     ("Pusher", "push_destination"): "push_destination",
                     ("Transform", "custom_config"): "transform_settings", ("SelectWinner", "rule"): "selection_rule",
                     **{(f"trainer_{kind}", "custom_config"): f"trainer_{kind}_settings" for kind in ("densenet", "mil")},
                     **{(f"evaluator_{kind}", "eval_config"): f"evaluator_{kind}_eval_config"
                        for kind in ("densenet", "mil")}}
    # kfp's own loader sees them as the pipeline's inputs, with their defaults
    component = components.load_component_from_file(path)
    assert component.component_spec.inputs["data_root"].default == "gs://histo-data/breakhis"


def test_the_spec_runner_hands_a_task_the_runs_parameter_or_the_default(compiled):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    from histopath.pipeline.spec_runner import SpecRun

    _, _, spec = compiled
    parsed = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    run = SpecRun(parsed, "/tmp/root", runner="subprocess", parameters={"data_root": "/mnt/other"})
    ingest = parsed.root.dag.tasks["IngestImages"]
    inputs = run.executor_input("IngestImages", ingest, parsed.components[ingest.component_ref.name]).inputs
    assert inputs.parameter_values["data_root"].string_value == "/mnt/other"
    assert inputs.parameter_values["settings"].string_value == spec["root"]["inputDefinitions"]["parameters"][
        "ingest_settings"]["defaultValue"]


def test_every_task_requests_cpu_and_memory_and_beam_uses_that_many_workers(compiled):
    from kfp.pipeline_spec import pipeline_spec_pb2

    from histopath.pipeline import resources

    _, _, spec = compiled
    executors = spec["deploymentSpec"]["executors"]
    expected = resources.resolve(spec["root"]["dag"]["tasks"])
    for name, task in spec["root"]["dag"]["tasks"].items():
        container = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]["container"]
        asked = expected[name]
        assert container["resources"] == {"cpuLimit": asked.cpu, "cpuRequest": asked.cpu,
                                          "memoryLimit": asked.memory_gb, "memoryRequest": asked.memory_gb}, name
        workers = [a for a in container["args"] if a.startswith("--direct_num_workers=")]
        assert workers == [f"--direct_num_workers={asked.beam_workers}"], name
    assert expected["trainer_mil"].cpu > expected["SchemaGen"].cpu  # a profile, not one size for all
    settings = json.loads(spec["root"]["inputDefinitions"]["parameters"]["ingest_settings"]["defaultValue"])
    assert f"--direct_num_workers={expected['IngestImages'].beam_workers}" in settings["beam_args"]
    assert "--direct_num_workers=0" not in json.dumps(spec)
    json_format_check = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
    assert json_format_check.DESCRIPTOR.fields_by_camelcase_name["cpuRequest"]  # fields the KFP driver reads


def test_resources_override_the_preset_and_give_the_trainers_a_gpu(tmp_path):
    config = resolve({"dataset": "breakhis", "data_dir": "gs://d/slides", "output_dir": "gs://r/w"})
    path = compile_kubeflow(config, str(tmp_path / "p.yaml"), image=IMAGE,
                            resources=["trainer_*=cpu=6,memory=40,gpu=NVIDIA_TESLA_T4:1", "Pusher=cpu=2,memory=3"])
    spec = yaml.safe_load(open(path))
    executors = spec["deploymentSpec"]["executors"]
    for trainer in ("trainer_densenet", "trainer_mil"):
        asked = executors[f"{trainer}_executor"]["container"]["resources"]
        assert asked["accelerator"] == {"type": "NVIDIA_TESLA_T4", "count": "1"}
        assert (asked["cpuRequest"], asked["memoryLimit"]) == (6.0, 40.0)
        assert "--direct_num_workers=6" in executors[f"{trainer}_executor"]["container"]["args"]
    assert executors["Pusher_executor"]["container"]["resources"]["cpuLimit"] == 2.0
    assert "accelerator" not in executors["Transform_executor"]["container"]["resources"]


@pytest.mark.parametrize("override, message", [
    ("trainer_*=cpu=0,memory=4", "positive numbers"),
    ("trainer_*=gpus=2", "expected TASK=cpu=N"),
    ("Trainer=cpu=2", "no task matches 'Trainer'"),
])
def test_a_bad_resources_override_is_one_line(tmp_path, capsys, override, message):
    argv = ["compile", "--dataset", "breakhis", "--data", "gs://d/slides", "--pipeline-root", "gs://r/w",
            "--output", str(tmp_path / "p.yaml"), "--resources", override]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1, error


@pytest.mark.parametrize("image, warned", [(None, True), ("registry.example/histopath/pipeline:1", False)])
def test_compiling_with_the_unpullable_default_image_warns(tmp_path, capsys, image, warned):
    from histopath.pipeline.kubeflow_runner import DEFAULT_IMAGE, IMAGE_DOCKERFILE

    argv = ["compile", "--dataset", "breakhis", "--data", "gs://d/slides", "--pipeline-root", "gs://r/w",
            "--output", str(tmp_path / "p.yaml")] + (["--image", image] if image else [])
    assert cli.main(argv) == 0
    error = capsys.readouterr().err
    assert (f"warning: the tasks run in {DEFAULT_IMAGE}" in error) is warned, error
    assert os.path.isfile(os.path.join(os.path.dirname(os.path.dirname(__file__)), IMAGE_DOCKERFILE))
    with pytest.raises(SystemExit):
        cli.main(["compile", "--help"])
    assert IMAGE_DOCKERFILE in " ".join(capsys.readouterr().out.split())  # what --image's help names

