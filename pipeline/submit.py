"""Submitting a compiled pipeline, once or on a schedule, to Kubeflow Pipelines or Vertex AI.

- Kubeflow Pipelines: `kfp.Client` (`create_run_from_pipeline_package`,
  `create_recurring_run`), against the KFP v2beta1 API.
- Vertex AI Pipelines: `google-cloud-aiplatform` (`PipelineJob.submit`,
  `PipelineJob.create_schedule`). `HISTOPATH_VERTEX_API_ENDPOINT` points the client at
  another endpoint (a private endpoint, or a test server).

Credentials: `submit_auth` (a token, a service-account token file, a session cookie or a
kubeconfig context for KFP; Application Default Credentials or a key file for Vertex).

A dry run builds exactly the request the client would send, prints it, and sends nothing.
Everything that can be checked here (the spec, the cron, the pipeline root, the service
answering an authenticated request) is checked before anything is sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tempfile
from typing import Any, Optional

from histopath import fileio
from histopath.errors import ConfigError
from histopath.pipeline import cron as cron_lib
from histopath.pipeline.submit_auth import KfpTarget, SubmitError, check_kfp, vertex_errors

__all__ = ["KfpTarget", "SubmitError", "Spec", "load_spec"]

KFP_SCHEMA_VERSION = "2.1.0"  # the only PipelineSpec version open-source KFP servers accept
VERTEX_CREATE_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class Spec:
    """A compiled pipeline: the PipelineSpec and where it came from."""

    path: str
    pipeline_spec: dict[str, Any]

    @property
    def name(self) -> str:
        return self.pipeline_spec["pipelineInfo"]["name"]

    @property
    def pipeline_root(self) -> Optional[str]:
        return self.pipeline_spec.get("defaultPipelineRoot")


def load_spec(path: str) -> Spec:
    """Reads a PipelineSpec YAML (what `histopath compile` writes), strictly.

    Raises:
      ConfigError: unreadable, or not a pipeline spec (naming the file and the problem).
    """
    import yaml
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    try:
        documents = [d for d in yaml.safe_load_all(fileio.read_text(path)) if d is not None]
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the pipeline spec ({error})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not a pipeline spec (not YAML: {str(error).splitlines()[0]})") from None
    if not documents or not isinstance(documents[0], dict) or "root" not in documents[0]:
        raise ConfigError(f"{path}: not a pipeline spec (expected a KFP PipelineSpec with pipelineInfo and root; "
                          "write one with `histopath compile`)")
    try:  # the parse kfp.Client and the KFP API server make
        json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    except json_format.ParseError as error:
        raise ConfigError(f"{path}: not a pipeline spec ({error})") from None
    return Spec(path, documents[0])


def _pipeline_root(spec: Spec, override: Optional[str], vertex: bool) -> str:
    root = override or spec.pipeline_root
    if not root:
        raise ConfigError(f"{spec.path} names no pipeline root: pass --pipeline-root")
    if vertex and not root.startswith("gs://"):
        raise ConfigError(f"Vertex AI needs a gs:// pipeline root, got {root!r}")
    if not fileio.is_uri(root) and not os.path.isabs(root):
        raise ConfigError(f"pipeline root {root!r} is a relative local path, which the cluster cannot reach")
    return root


# ---- Kubeflow Pipelines -----------------------------------------------------------------
def _check_kfp_spec(spec: Spec) -> None:
    version = spec.pipeline_spec.get("schemaVersion", "")
    if version != KFP_SCHEMA_VERSION:
        raise ConfigError(f"{spec.path}: Kubeflow Pipelines accepts PipelineSpec schema {KFP_SCHEMA_VERSION} only, "
                          f"this spec is {version!r} (compile it with `histopath compile`)")


@contextlib.contextmanager
def _kfp_client(target: KfpTarget):
    """`kfp.Client` for `target` (it prints links to stdout, kept off the terminal here)."""
    import warnings

    import kfp

    from histopath.pipeline.submit_auth import kfp_client_arguments

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", FutureWarning)
        yield kfp.Client(**kfp_client_arguments(target))


def _kfp_package(spec: Spec, folder: str) -> str:
    import yaml

    path = os.path.join(folder, "pipeline.yaml")  # kfp.Client reads .yaml/.yml/.zip/.tar.gz only
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(spec.pipeline_spec, handle, sort_keys=True)
    return path


def _kfp_spec_body(spec: Spec) -> dict[str, Any]:
    """`pipeline_spec` as kfp.Client sends it (the YAML parsed into PipelineSpec and back)."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    return json_format.MessageToDict(json_format.ParseDict(spec.pipeline_spec, pipeline_spec_pb2.PipelineSpec()))


def _kfp_request(path: str, body, target: KfpTarget, experiment: Optional[str]) -> dict:
    import kfp_server_api

    return {"method": "POST", "path": path, "experiment": experiment or "Default", "namespace": target.namespace,
            "credential": target.describe_credential(),
            "body": kfp_server_api.ApiClient().sanitize_for_serialization(body)}


def kfp_run_request(spec: Spec, target: KfpTarget, *, run_name: str, experiment: Optional[str],
                    pipeline_root: Optional[str], parameters: Optional[dict[str, str]] = None) -> dict:
    """The `POST /apis/v2beta1/runs` body `kfp_submit` sends (the experiment by name: its
    id is looked up when sending)."""
    import kfp_server_api

    body = kfp_server_api.V2beta1Run(
        display_name=run_name, pipeline_spec=_kfp_spec_body(spec),
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(pipeline_root=_pipeline_root(spec, pipeline_root, False),
                                                           parameters=dict(parameters or {})))
    return _kfp_request("/apis/v2beta1/runs", body, target, experiment)


def kfp_recurring_run_request(spec: Spec, target: KfpTarget, *, name: str, cron: str, max_concurrency: int,
                              no_catchup: bool, experiment: Optional[str], pipeline_root: Optional[str],
                              parameters: Optional[dict[str, str]] = None) -> dict:
    """The `POST /apis/v2beta1/recurringruns` body `kfp_schedule` sends."""
    import kfp_server_api

    body = kfp_server_api.V2beta1RecurringRun(
        mode=kfp_server_api.RecurringRunMode.ENABLE, display_name=name, pipeline_spec=_kfp_spec_body(spec),
        no_catchup=no_catchup, max_concurrency=max_concurrency,
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(pipeline_root=_pipeline_root(spec, pipeline_root, False),
                                                           parameters=dict(parameters or {})),
        trigger=kfp_server_api.V2beta1Trigger(cron_schedule=kfp_server_api.V2beta1CronSchedule(
            cron=cron_lib.to_kfp(cron))))
    return _kfp_request("/apis/v2beta1/recurringruns", body, target, experiment)


def kfp_submit(target: KfpTarget, spec: Spec, *, run_name: str, experiment: Optional[str] = None,
               pipeline_root: Optional[str] = None, parameters: Optional[dict[str, str]] = None) -> dict:
    """Starts one run; returns {"run_id", "experiment"}."""
    _check_kfp_spec(spec)
    root = _pipeline_root(spec, pipeline_root, False)
    check_kfp(target)
    with tempfile.TemporaryDirectory() as folder, _kfp_client(target) as client:
        result = client.create_run_from_pipeline_package(
            _kfp_package(spec, folder), arguments=dict(parameters or {}), run_name=run_name,
            experiment_name=experiment or "Default", namespace=target.namespace, pipeline_root=root)
    return {"run_id": result.run_id, "experiment": experiment or "Default"}


def kfp_schedule(target: KfpTarget, spec: Spec, *, name: str, cron: str, max_concurrency: int = 1,
                 no_catchup: bool = False, experiment: Optional[str] = None,
                 pipeline_root: Optional[str] = None, parameters: Optional[dict[str, str]] = None) -> dict:
    """Creates a recurring run; returns {"recurring_run_id", "cron"} (the cron as KFP reads it)."""
    _check_kfp_spec(spec)
    kfp_cron = cron_lib.to_kfp(cron)
    root = _pipeline_root(spec, pipeline_root, False)
    check_kfp(target)
    with tempfile.TemporaryDirectory() as folder, _kfp_client(target) as client:
        experiment_id = client.create_experiment(experiment or "Default", namespace=target.namespace).experiment_id
        result = client.create_recurring_run(
            experiment_id=experiment_id, job_name=name, cron_expression=kfp_cron, max_concurrency=max_concurrency,
            no_catchup=no_catchup, params=dict(parameters or {}), pipeline_package_path=_kfp_package(spec, folder), pipeline_root=root)
    return {"recurring_run_id": result.recurring_run_id, "cron": kfp_cron}


# ---- Vertex AI ----------------------------------------------------------------------------
def parse_vertex_target(text: str) -> tuple[str, str]:
    """"PROJECT/REGION" -> (project, region).

    Raises:
      ConfigError: another form.
    """
    project, _, region = text.partition("/")
    if not project or not region or "/" in region:
        raise ConfigError(f"--vertex takes PROJECT/REGION (e.g. my-project/europe-west4), got {text!r}")
    return project, region


def _vertex_job(spec: Spec, project: str, region: str, *, display_name: str, pipeline_root: Optional[str],
                credentials, parameters: Optional[dict[str, str]]):
    """A PipelineJob holding its own credentials (inside `submit_auth.vertex_session`)."""
    from google.cloud import aiplatform

    return aiplatform.PipelineJob(display_name=display_name, template_path=spec.path, project=project,
                                  location=region, credentials=credentials, parameter_values=dict(parameters or {}),
                                  pipeline_root=_pipeline_root(spec, pipeline_root, True))


def vertex_job_request(spec: Spec, target: str, *, display_name: str, pipeline_root: Optional[str] = None,
                       service_account: Optional[str] = None, parameters: Optional[dict[str, str]] = None) -> dict:
    """The `pipelineJobs.create` request `vertex_submit` sends (built without credentials)."""
    from google.auth.credentials import AnonymousCredentials

    from histopath.pipeline.submit_auth import vertex_session

    project, region = parse_vertex_target(target)
    _pipeline_root(spec, pipeline_root, True)
    with vertex_session(project, region):
        job = _vertex_job(spec, project, region, display_name=display_name, pipeline_root=pipeline_root,
                          credentials=AnonymousCredentials(),  # building the request needs no account
                          parameters=parameters)
        body = job.to_dict()
    if service_account:
        body["serviceAccount"] = service_account
    return {"method": "POST", "path": f"/v1/projects/{project}/locations/{region}/pipelineJobs", "body": body}


def vertex_schedule_request(spec: Spec, target: str, *, name: str, cron: str, max_concurrency: int,
                            pipeline_root: Optional[str] = None, service_account: Optional[str] = None,
                            parameters: Optional[dict[str, str]] = None) -> dict:
    """The `schedules.create` request `vertex_schedule` sends."""
    cron_lib.check_unix_cron(cron)
    job = vertex_job_request(spec, target, display_name=name, pipeline_root=pipeline_root,
                             service_account=service_account, parameters=parameters)
    parent = job["path"].rsplit("/", 1)[0]
    pipeline_job = {key: value for key, value in job["body"].items() if key != "displayName"}
    return {"method": "POST", "path": f"{parent}/schedules",
            "body": {"displayName": name, "cron": cron, "maxConcurrentRunCount": str(max_concurrency),
                     "createPipelineJobRequest": {"parent": parent[len("/v1/"):], "pipelineJob": pipeline_job}}}


@contextlib.contextmanager
def _authenticated_vertex_job(spec: Spec, target: str, *, display_name: str, pipeline_root: Optional[str],
                              key_file: Optional[str], parameters: Optional[dict[str, str]]):
    from histopath.pipeline.submit_auth import check_vertex, vertex_credentials, vertex_session

    project, region = parse_vertex_target(target)
    _pipeline_root(spec, pipeline_root, True)
    credentials = vertex_credentials(key_file)
    check_vertex(credentials, project, region)
    with vertex_session(project, region, credentials), vertex_errors():
        yield _vertex_job(spec, project, region, display_name=display_name, pipeline_root=pipeline_root,
                          credentials=credentials, parameters=parameters)


def vertex_submit(spec: Spec, target: str, *, display_name: str, pipeline_root: Optional[str] = None,
                  service_account: Optional[str] = None, key_file: Optional[str] = None,
                  parameters: Optional[dict[str, str]] = None) -> dict:
    """Starts one Vertex AI pipeline run; returns {"resource_name"}."""
    with _authenticated_vertex_job(spec, target, display_name=display_name, pipeline_root=pipeline_root,
                                   key_file=key_file, parameters=parameters) as job:
        job.submit(service_account=service_account, create_request_timeout=VERTEX_CREATE_TIMEOUT_S)
    return {"resource_name": job.resource_name}


def vertex_schedule(spec: Spec, target: str, *, name: str, cron: str, max_concurrency: int = 1,
                    pipeline_root: Optional[str] = None, service_account: Optional[str] = None,
                    key_file: Optional[str] = None, parameters: Optional[dict[str, str]] = None) -> dict:
    """Creates a Vertex AI pipeline schedule; returns {"resource_name", "cron"}."""
    cron_lib.check_unix_cron(cron)
    with _authenticated_vertex_job(spec, target, display_name=name, pipeline_root=pipeline_root,
                                   key_file=key_file, parameters=parameters) as job:
        schedule = job.create_schedule(cron=cron, display_name=name, max_concurrent_run_count=max_concurrency,
                                       service_account=service_account,
                                       create_request_timeout=VERTEX_CREATE_TIMEOUT_S)
        name = schedule.resource_name
    return {"resource_name": name, "cron": cron}
