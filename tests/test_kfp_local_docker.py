"""The compiled pipeline, run end to end in the pipeline image built here (opt-in: needs a
Docker engine; `pytest -m docker`).

`scripts/kfp-local-run.sh` builds the image from requirements/lock.txt on the debootstrap
base, generates the demo sample, compiles the pipeline with every path in one mounted
folder and runs each task's container with the executor input the KFP driver would hand
it (`histopath.pipeline.spec_runner`). The figures of the run (image size, build and run
time) are kept in test-artifacts/kfp-local-run.json for the README.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import time

import pytest

pytestmark = pytest.mark.docker

REPO = pathlib.Path(__file__).resolve().parent.parent
IMAGE = "histopath/pipeline:test"


@pytest.fixture(scope="module")
def docker_engine():
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.fail("no Docker engine answers (start one: dockerd --iptables=false --bridge=none &)")


@pytest.fixture(scope="module")
def local_run(docker_engine, tmp_path_factory):
    work = tmp_path_factory.mktemp("kfp-local")
    started = time.monotonic()
    done = subprocess.run(["bash", str(REPO / "scripts" / "kfp-local-run.sh"), str(work)], capture_output=True,
                          text=True, timeout=3600, env={**os.environ, "IMAGE": IMAGE})
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    (summary_path,) = work.glob("run/pipeline_root/histopath/*/run_summary.json")
    return work, json.loads(summary_path.read_text()), done.stderr, seconds


def test_every_task_ran_in_the_image_and_the_model_was_pushed_to_the_mounted_folder(local_run, artifacts_dir):
    from histopath.models import exported

    work, summary, log, seconds = local_run
    tasks = summary["tasks"]
    assert {name for name, task in tasks.items() if task["status"] == "complete"} == set(tasks), tasks
    assert {"IngestImages", "Transform", "trainer_densenet", "trainer_mil", "LatestPushedModel", "SelectWinner",
            "Pusher", "RunReport"} <= set(tasks)
    assert exported.list_versions(str(work / "serving" / "histopath")) == [1]
    info = exported.read_model_info(str(work / "serving" / "histopath"))
    assert info["model_kind"] in ("densenet", "mil")
    # The custom artifact types resolved in the container: both reports were written.
    assert (pathlib.Path(tasks["IngestImages"]["artifacts"]["report"]["uri"]) / "ingest_report.json").is_file()
    assert (pathlib.Path(tasks["RunReport"]["artifacts"]["report"]["uri"]) / "report.json").is_file()
    assert json.loads((work / "run" / "report" / "report.json").read_text())["pushed"]["pushed"]
    size = int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE], capture_output=True,
                              text=True, check=True).stdout)
    figures = {"image_bytes": size, "script_seconds": round(seconds, 1), "pipeline_seconds": summary["seconds"],
               "tasks": {name: round(task["seconds"], 1) for name, task in tasks.items()}}
    build = [line for line in log.splitlines() if "built " in line]
    figures["build_line"] = build[-1] if build else ""
    (artifacts_dir / "kfp-local-run.json").write_text(json.dumps(figures, indent=2))
