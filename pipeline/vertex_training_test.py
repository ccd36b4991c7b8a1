"""`pipeline.vertex_training`: the job spec and the options of `histopath compile --train-on vertex`.

The compiled spec and the extension's request: `tests/test_vertex_training_contract.py`.
"""

from __future__ import annotations

import pytest

from histopath import cli
from histopath.errors import ConfigError
from histopath.pipeline import vertex_training

IMAGE = "europe-docker.pkg.dev/histo-project/histopath/pipeline:7"


def test_the_job_spec_has_a_chief_pool_and_a_worker_pool_of_the_image():
    training = vertex_training.VertexTraining("histo-project", "europe-west4", "n1-highmem-8", 3,
                                              "NVIDIA_TESLA_T4", 2, "trainer@histo-project.iam.gserviceaccount.com")
    config = training.custom_config(IMAGE)
    assert config["ai_platform_enable_vertex"] is True and config["ai_platform_vertex_region"] == "europe-west4"
    args = config["ai_platform_training_args"]
    assert args["project"] == "histo-project"
    assert args["job_spec"]["service_account"] == "trainer@histo-project.iam.gserviceaccount.com"
    pools = args["job_spec"]["worker_pool_specs"]
    assert [pool["replica_count"] for pool in pools] == [1, 2]
    assert all(pool["container_spec"] == {"image_uri": IMAGE} for pool in pools)
    assert pools[0]["machine_spec"] == {"machine_type": "n1-highmem-8", "accelerator_type": "NVIDIA_TESLA_T4",
                                        "accelerator_count": 2}
    one = vertex_training.VertexTraining("histo-project", "europe-west4").custom_config(IMAGE)
    assert len(one["ai_platform_training_args"]["job_spec"]["worker_pool_specs"]) == 1


@pytest.mark.parametrize("options, message", [
    (("pod", None, "europe-west4", None, None), "--vertex-region only apply with --train-on vertex"),
    (("vertex", None, "europe-west4", None, None), "needs --vertex-project"),
    (("vertex", "histo-project", None, None, None), "needs --vertex-region"),
    (("vertex", "histo-project", "Europe", None, None), "is not a region"),
    (("vertex", "histo-project", "europe-west4", None, 0), "--trainer-workers must be >= 1"),
    (("vertex", "histo-project", "europe-west4", None, 2, "t4"), "expected TYPE[:COUNT]"),
])
def test_bad_training_options_are_named(options, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        vertex_training.from_options(*options)


def test_training_in_the_pod_is_the_default():
    assert vertex_training.from_options("pod", None, None, None, None) is None


def test_patient_folds_across_workers_are_refused_at_compile_time(tmp_path, capsys):
    argv = ["compile", "--dataset", "breakhis", "--data", "gs://d/b", "--pipeline-root", "gs://r/w",
            "--output", str(tmp_path / "p.yaml"), "--image", IMAGE, "--train-on", "vertex",
            "--vertex-project", "histo-project", "--vertex-region", "europe-west4", "--trainer-workers", "2"]
    assert cli.main(argv) == 1  # the breakhis preset cross-validates over 5 patient folds
    error = capsys.readouterr().err
    assert "--trainer-workers 2" in error and "5 patient folds" in error, error
    assert not (tmp_path / "p.yaml").exists()
