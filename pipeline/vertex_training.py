"""The Trainers as Vertex AI custom training jobs (`histopath compile --train-on vertex`).

With it, every Trainer of the compiled pipeline is TFX's
`tfx.extensions.google_cloud_ai_platform.Trainer`: its task launches a Vertex AI
CustomJob and waits for it, and the job runs the Trainer's own executor
(`python -m tfx.scripts.run_executor`, TFX sets the command) in the pipeline image, one
replica in worker pool 0 (the chief) and `workers - 1` in worker pool 1. Vertex gives
every replica the cluster in `TF_CONFIG`, so with more than one worker `run_fn` trains
under `MultiWorkerMirroredStrategy` (`models.distribute`).

The job spec is the extension's `custom_config["ai_platform_training_args"]`:

    {"project": P, "job_spec": {"worker_pool_specs": [
        {"machine_spec": {"machine_type": M}, "replica_count": 1, "container_spec": {"image_uri": IMAGE}},
        {"machine_spec": {"machine_type": M}, "replica_count": N - 1, "container_spec": {"image_uri": IMAGE}}]}}
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional

from histopath.errors import ConfigError

# custom_config keys of tfx.extensions.google_cloud_ai_platform (its trainer executor and
# constants modules; spelled out so that compiling does not import the extension's clients).
TRAINING_ARGS_KEY = "ai_platform_training_args"
ENABLE_VERTEX_KEY = "ai_platform_enable_vertex"
VERTEX_REGION_KEY = "ai_platform_vertex_region"
DEFAULT_MACHINE = "n1-standard-8"
TRAIN_ON = ("pod", "vertex")
_REGION = re.compile(r"[a-z]+-[a-z]+\d+")
_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")


@dataclasses.dataclass(frozen=True)
class VertexTraining:
    """Where and on what the Trainers' custom jobs run.

    Attributes:
      project: the Google Cloud project of the jobs.
      region: the Vertex AI region (e.g. europe-west4).
      machine_type: every replica's machine type.
      workers: replicas in all (1 = one machine, no strategy).
      accelerator_type: e.g. NVIDIA_TESLA_T4 (the GPU image then), None for none.
      accelerator_count: accelerators per replica.
      service_account: the jobs' service account (None: Vertex's default).
    """

    project: str
    region: str
    machine_type: str = DEFAULT_MACHINE
    workers: int = 1
    accelerator_type: Optional[str] = None
    accelerator_count: int = 1
    service_account: Optional[str] = None

    def __post_init__(self) -> None:
        checks = (
            (bool(_PROJECT.fullmatch(self.project or "")), f"--vertex-project {self.project!r} is not a project id"),
            (bool(_REGION.fullmatch(self.region or "")),
             f"--vertex-region {self.region!r} is not a region such as europe-west4"),
            (bool(self.machine_type), "--trainer-machine must name a machine type"),
            (isinstance(self.workers, int) and self.workers >= 1, f"--trainer-workers must be >= 1, got {self.workers}"),
            (self.accelerator_count >= 1, "--trainer-accelerator count must be >= 1"),
            (not self.service_account or "@" in self.service_account,
             f"--trainer-service-account {self.service_account!r} is not an e-mail address"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def worker_pool_specs(self, image: str) -> list[dict[str, Any]]:
        """The CustomJob's worker pools: the chief, then the other workers (if any)."""
        machine: dict[str, Any] = {"machine_type": self.machine_type}
        if self.accelerator_type:
            machine.update(accelerator_type=self.accelerator_type, accelerator_count=self.accelerator_count)
        pools = [{"machine_spec": dict(machine), "replica_count": 1, "container_spec": {"image_uri": image}}]
        if self.workers > 1:
            pools.append({"machine_spec": dict(machine), "replica_count": self.workers - 1,
                          "container_spec": {"image_uri": image}})
        return pools

    def custom_config(self, image: str) -> dict[str, Any]:
        """The extension Trainer's keys of `custom_config` (merged into the candidate's)."""
        job_spec: dict[str, Any] = {"worker_pool_specs": self.worker_pool_specs(image)}
        if self.service_account:
            job_spec["service_account"] = self.service_account
        return {TRAINING_ARGS_KEY: {"project": self.project, "job_spec": job_spec},
                ENABLE_VERTEX_KEY: True, VERTEX_REGION_KEY: self.region}


def parse_accelerator(text: Optional[str]) -> tuple[Optional[str], int]:
    """`TYPE[:COUNT]` (e.g. NVIDIA_TESLA_T4:1) -> (type, count); None -> (None, 1).

    Raises:
      ConfigError: a malformed value.
    """
    if not text:
        return None, 1
    match = re.fullmatch(r"([A-Z][A-Z0-9_]+)(?::(\d+))?", text)
    if not match:
        raise ConfigError(f"--trainer-accelerator {text!r}: expected TYPE[:COUNT], e.g. NVIDIA_TESLA_T4:1")
    return match.group(1), int(match.group(2) or 1)


def from_options(train_on: str, project: Optional[str], region: Optional[str], machine: Optional[str],
                 workers: Optional[int], accelerator: Optional[str] = None,
                 service_account: Optional[str] = None) -> Optional[VertexTraining]:
    """The `histopath compile` options -> a VertexTraining, or None to train in the pod.

    Raises:
      ConfigError: Vertex options without `--train-on vertex`, or a missing project/region.
    """
    if train_on not in TRAIN_ON:
        raise ConfigError(f"--train-on must be one of {TRAIN_ON}, got {train_on!r}")
    given = {name: value for name, value in (
        ("--vertex-project", project), ("--vertex-region", region), ("--trainer-machine", machine),
        ("--trainer-workers", workers), ("--trainer-accelerator", accelerator),
        ("--trainer-service-account", service_account)) if value is not None}
    if train_on == "pod":
        if given:
            raise ConfigError(f"{', '.join(sorted(given))} only apply with --train-on vertex")
        return None
    missing = [name for name, value in (("--vertex-project", project), ("--vertex-region", region)) if not value]
    if missing:
        raise ConfigError(f"--train-on vertex needs {' and '.join(missing)}")
    accelerator_type, count = parse_accelerator(accelerator)
    return VertexTraining(project, region, machine or DEFAULT_MACHINE, 1 if workers is None else workers,
                          accelerator_type, count, service_account)


def check_folds(training: Optional[VertexTraining], kind: str, settings: Mapping[str, Any]) -> None:
    """Patient folds are not run across workers (`models.distribute.refuse_folds`):
    refused when compiling already.

    Raises:
      ConfigError: more than one worker and a candidate with folds.
    """
    if training is not None and training.workers > 1 and int(settings.get("folds", 0)) >= 2:
        raise ConfigError(
            f"--trainer-workers {training.workers}: the {kind} candidate is cross-validated over "
            f"{settings['folds']} patient folds, which are not run across workers; use one worker, "
            "or a preset or --config without folds (selection.folds 0)")
