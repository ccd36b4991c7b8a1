"""The GPU pipeline image: requirements/lock-gpu.txt against the lock and TensorFlow's own
`and-cuda` extra, the recipe (pipeline/docker/pipeline-gpu.Dockerfile), and (opt-in,
`pytest -m docker`) its build with the CUDA libraries loading inside it. A GPU run needs a
machine with one: the last test runs only where Docker has the NVIDIA runtime and a GPU.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_dockerfiles import copy_sources, dockerignore_patterns, is_ignored, parse_dockerfile

from histopath.pipeline import gpu_check

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"
GPU_LOCK = REPO / "requirements" / "lock-gpu.txt"
GPU_DOCKERFILE = REPO / "pipeline" / "docker" / "pipeline-gpu.Dockerfile"
CPU_IMAGE = "histopath/pipeline:test"  # the tag tests/test_kfp_local_docker.py builds too
GPU_IMAGE = "histopath/pipeline-gpu:test"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;#]+)")


def _blocks(text: str) -> dict[str, str]:
    """name -> its block (pin line and `# via` lines) of a uv-style lock."""
    blocks: dict[str, str] = {}
    name = None
    for line in text.splitlines(keepends=True):
        match = PIN.match(line)
        if match:
            name = canonicalize_name(match.group(1))
            blocks[name] = line
        elif name is not None:
            blocks[name] += line
    return blocks


def test_gpu_lock_is_the_lock_plus_exactly_tensorflows_and_cuda_wheels():
    cpu, gpu = _blocks(LOCK.read_text()), _blocks(GPU_LOCK.read_text())
    changed = [name for name in cpu if gpu.get(name) != cpu[name]]
    assert not changed, f"lock-gpu.txt differs from lock.txt for {changed}: run `make lock-gpu`"
    added = {name: PIN.match(block).group(3) for name, block in gpu.items() if name not in cpu}
    declared = {}
    for text in importlib.metadata.requires("tensorflow"):
        requirement = Requirement(text)
        if requirement.marker and requirement.marker.evaluate({"extra": "and-cuda"}) \
                and not requirement.marker.evaluate({"extra": ""}):
            (spec,) = requirement.specifier
            declared[canonicalize_name(requirement.name)] = spec.version
    assert importlib.metadata.version("tensorflow") == PIN.match(gpu["tensorflow"]).group(3)
    assert declared and set(declared) <= set(added), f"missing from lock-gpu.txt: {set(declared) - set(added)}"
    for name, version in declared.items():
        assert added[name] == version, f"{name}: lock-gpu.txt has {added[name]}, tensorflow declares {version}"
    assert all(name.startswith("nvidia-") and name.endswith("-cu12") for name in added), added


def test_gpu_recipe_builds_on_the_pipeline_image_and_puts_every_cuda_folder_on_the_library_path():
    instructions = parse_dockerfile(GPU_DOCKERFILE)
    assert instructions[0].keyword == "ARG" and instructions[0].arguments == "PIPELINE_IMAGE=histopath/pipeline:latest"
    assert [i.arguments for i in instructions if i.keyword == "FROM"] == ["${PIPELINE_IMAGE}"]
    patterns = dockerignore_patterns()
    for source in copy_sources(instructions):
        assert (REPO / source).is_file(), source
        assert not is_ignored(source, patterns), f"{source} is excluded by .dockerignore"
    env = " ".join(i.arguments for i in instructions if i.keyword == "ENV")
    root = re.search(r"NVIDIA_ROOT=(\S+)", env).group(1)
    library_path = re.search(r"LD_LIBRARY_PATH=(\S+)", env).group(1).split(":")
    for folder in set(gpu_check.CUDA_LIBRARIES.values()):
        assert f"${{NVIDIA_ROOT}}/{folder}/lib" in library_path, folder
    assert f"{root}/cuda_nvcc/bin" in re.search(r"PATH=(\S+)", env.replace("LD_LIBRARY_PATH", "")).group(1)
    runs = " ".join(i.arguments for i in instructions if i.keyword == "RUN")
    assert "pip install --no-deps --ignore-requires-python -r /tmp/requirements/cuda.txt" in runs
    assert "histopath.pipeline.gpu_check --lock /tmp/requirements/lock-gpu.txt --libraries" in runs


def _docker_ready() -> None:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.fail("no Docker engine answers (start one: dockerd --iptables=false --bridge=none &)")


@pytest.fixture(scope="module")
def gpu_image():
    """Builds the CPU image (cached layers when test_kfp_local_docker built it) and the GPU
    image on it with scripts/build-pipeline-image.sh; returns the script's log."""
    _docker_ready()
    done = subprocess.run(["bash", str(REPO / "scripts" / "build-pipeline-image.sh")], capture_output=True,
                          text=True, timeout=5400,
                          env={**os.environ, "IMAGE": CPU_IMAGE, "GPU": "1", "GPU_IMAGE": GPU_IMAGE})
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.split() == [CPU_IMAGE, GPU_IMAGE]
    return done.stderr


@pytest.mark.docker
def test_gpu_image_holds_the_cuda_lock_and_its_libraries_load(gpu_image, artifacts_dir):
    run = subprocess.run(["docker", "run", "--rm", "--network", "none", GPU_IMAGE, "python", "-m",
                          "histopath.pipeline.gpu_check", "--libraries"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["tensorflow"] == "2.16.2" and result["cuda_version"].startswith("12.3"), result
    assert result["cudnn_version"].startswith("8"), result
    assert result["gpus"] == []  # no --gpus: the container sees no GPU
    sizes = {image: int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", image], capture_output=True,
                                       text=True, check=True).stdout) for image in (CPU_IMAGE, GPU_IMAGE)}
    built = [line for line in gpu_image.splitlines() if "built " in line]
    (artifacts_dir / "gpu-image.json").write_text(json.dumps({"check": result, "image_bytes": sizes,
                                                              "build_lines": built}, indent=2))


@pytest.mark.docker
def test_tensorflow_lists_the_gpu_in_the_image(request):
    """Only on a machine with a GPU and the NVIDIA container runtime."""
    _docker_ready()
    runtimes = subprocess.run(["docker", "info", "-f", "{{json .Runtimes}}"], capture_output=True, text=True).stdout
    if not pathlib.Path("/dev/nvidia0").exists() or "nvidia" not in runtimes:
        pytest.skip("no GPU with the NVIDIA container runtime on this machine")
    request.getfixturevalue("gpu_image")
    run = subprocess.run(["docker", "run", "--rm", "--gpus", "all", GPU_IMAGE, "python", "-m",
                          "histopath.pipeline.gpu_check", "--libraries", "--expect-gpu"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["gpus"]
