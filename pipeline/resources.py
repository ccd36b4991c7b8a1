"""CPU, memory and GPU of every task of the compiled pipeline, and the Beam worker count
that follows from them.

Each component gets a `ResourceSpec` through TFX's own route (`with_platform_config`,
which TFX's Kubeflow V2 step builder copies into the executor's `container.resources`).
Both backends read those fields: the open-source KFP driver turns `cpuRequest`,
`cpuLimit`, `memoryRequest`, `memoryLimit` (GB) into the pod's requests and limits, and
`accelerator.type` into the name of a limited resource (so `nvidia.com/gpu` there);
Vertex AI chooses a machine from the limits and takes `accelerator.type` as its enum
(`NVIDIA_TESLA_T4`, `NVIDIA_L4`, ...).

The figures below are starting requests by kind of work (Beam over images, training,
evaluation, bookkeeping), not measurements; `histopath compile --resources` overrides
them per task:

    --resources 'trainer_*=cpu=8,memory=32,gpu=NVIDIA_TESLA_T4:1'

The DirectRunner's `--direct_num_workers=0` means "one worker per core the process sees",
which in a pod is the node's cores, not its CPU request; each task's `0` is replaced by its
CPU request (at least 1).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any, Iterable, Sequence

from histopath.errors import ConfigError

WORKERS_ARG = "--direct_num_workers="


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one task's container asks for."""

    cpu: float
    memory_gb: float
    gpu_type: str = ""
    gpu_count: int = 0

    def resource_spec(self):
        """As the PipelineSpec's `ResourceSpec` (requests = limits)."""
        from kfp.pipeline_spec import pipeline_spec_pb2

        spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec(
            cpu_limit=self.cpu, cpu_request=self.cpu, memory_limit=self.memory_gb, memory_request=self.memory_gb)
        if self.gpu_count:
            spec.accelerator.type = self.gpu_type
            spec.accelerator.count = self.gpu_count
        return spec

    @property
    def beam_workers(self) -> int:
        """DirectRunner worker processes for this CPU request."""
        return max(1, math.floor(self.cpu))


# (task-id pattern, resources): the first pattern that matches a task is its entry.
STANDARD: tuple[tuple[str, Resources], ...] = (
    ("IngestImages", Resources(4, 16)),
    ("StatisticsGen", Resources(4, 16)),
    ("Transform", Resources(4, 16)),
    ("trainer_*", Resources(8, 32)),
    ("evaluator_*", Resources(4, 16)),
    ("*", Resources(1, 4)),
)
SMALL: tuple[tuple[str, Resources], ...] = (
    ("trainer_*", Resources(2, 8)),
    ("*", Resources(1, 4)),
)
PROFILE_BY_PRESET = {"demo": SMALL}


def parse_override(text: str) -> tuple[str, dict[str, Any]]:
    """"PATTERN=cpu=N,memory=GB,gpu=TYPE[:COUNT]" -> (pattern, fields).

    Raises:
      ConfigError: another form.
    """
    pattern, sep, rest = text.partition("=")
    fields: dict[str, Any] = {}
    for item in rest.split(",") if sep else []:
        key, _, value = item.partition("=")
        try:
            if key == "cpu":
                fields["cpu"] = float(value)
            elif key == "memory":
                fields["memory_gb"] = float(value.removesuffix("G").removesuffix("Gi"))
            elif key == "gpu":
                gpu_type, _, count = value.partition(":")
                fields.update(gpu_type=gpu_type, gpu_count=int(count or 1))
                if not gpu_type:
                    raise ValueError
            else:
                raise ValueError
        except ValueError:
            fields = {}
            break
    if not pattern or not fields or any(fields.get(k, 1) <= 0 for k in ("cpu", "memory_gb", "gpu_count")):
        raise ConfigError(f"--resources {text!r}: expected TASK=cpu=N,memory=GB[,gpu=TYPE[:COUNT]] with positive "
                          "numbers (TASK may be a pattern such as 'trainer_*')")
    return pattern, fields


def resolve(task_ids: Iterable[str], preset: str = "", overrides: Sequence[str] = ()) -> dict[str, Resources]:
    """Each task's resources: the preset's profile, then `overrides` in order.

    Raises:
      ConfigError: an override that is malformed or names no task.
    """
    task_ids = list(task_ids)
    profile = PROFILE_BY_PRESET.get(preset, STANDARD)
    result = {task: next(r for pattern, r in profile if fnmatch.fnmatchcase(task, pattern)) for task in task_ids}
    for text in overrides:
        pattern, fields = parse_override(text)
        matched = [task for task in task_ids if fnmatch.fnmatchcase(task, pattern)]
        if not matched:
            raise ConfigError(f"--resources {text!r}: no task matches {pattern!r} (tasks: {', '.join(task_ids)})")
        for task in matched:
            result[task] = dataclasses.replace(result[task], **fields)
    return result


def apply(components: Iterable[Any], resources: dict[str, Resources]) -> None:
    """Attaches each component's ResourceSpec (TFX's `with_platform_config`)."""
    for component in components:
        component.with_platform_config(resources[component.id].resource_spec())


def size_beam_workers(spec: dict[str, Any], resources: dict[str, Resources]) -> None:
    """Replaces each task's `--direct_num_workers=0` (its container arguments, and the
    ingestion's own Beam options in its settings) with its CPU request, in place."""
    import json

    tasks = spec["root"]["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]
    zero = WORKERS_ARG + "0"
    for name, task in tasks.items():
        workers = f"{WORKERS_ARG}{resources[name].beam_workers}"
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        container = executors[label].get("container", {})
        container["args"] = [workers if arg == zero else arg for arg in container.get("args", [])]
    settings = spec["root"].get("inputDefinitions", {}).get("parameters", {}).get("ingest_settings")
    if settings and "IngestImages" in resources:
        values = json.loads(settings["defaultValue"])
        values["beam_args"] = [f"{WORKERS_ARG}{resources['IngestImages'].beam_workers}" if arg == zero else arg
                               for arg in values.get("beam_args", [])]
        settings["defaultValue"] = json.dumps(values, sort_keys=True)
