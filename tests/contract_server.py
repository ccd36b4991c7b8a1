"""A local HTTP endpoint standing in for the Kubeflow Pipelines v2beta1 API, the Vertex AI v1
API (pipeline jobs, schedules and the custom jobs of the Vertex Trainer), the bits of Cloud
Storage `PipelineJob.submit` touches, and an OAuth token endpoint.

It is a contract test, not a cluster: it receives the requests of the REAL clients
(`kfp.Client`, `google-cloud-aiplatform`), checks every body against the API's own
generated models, answers as the API documents, and records everything.

- KFP bodies are walked against `kfp_server_api` 2.0.5's models (field names and types,
  enums; unknown fields rejected), and the API server's own rules (a non-empty name,
  max_concurrency 1-10, a robfig/cron v1 cron, a PipelineSpec of schema 2.1.0).
- Vertex bodies are parsed strictly (`json_format.Parse`, unknown fields rejected) into
  `google.cloud.aiplatform_v1` types; the pipeline spec inside strictly as a PipelineSpec.

A rejected request gets 400 with the API's error body and is listed in `errors`.

Every request is recorded with its headers. With `authorize` set (a check of a request's
headers: `carries(name, value)`, or `google_bearer(...)`, which also accepts the self-signed
JWT Google's client libraries make from a service-account key), a request that fails it
is answered 401 as the real API answers, and `unauthenticated()` lists it. `multi_user=True` answers like a multi-user Kubeflow: healthz says so and an
experiment must name its namespace. KFP is also served under the Kubernetes API server's
service-proxy path (`/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy/`),
where `kfp.Client` goes through a kubeconfig.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import kfp_server_api
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from histopath.pipeline import cron

_NATIVE = {"str", "int", "bool", "float", "object", "datetime", "date"}
_INT64_AS_STRING = {("V2beta1RecurringRun", "max_concurrency")}  # swagger types int64 as string


KUBE_PROXY = "/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy/"


def _header_values(headers: dict, name: str) -> list[str]:
    """The values of header `name` (case-insensitive); a Cookie header's cookies one by one too."""
    values = [value for key, value in headers.items() if key.lower() == name.lower()]
    if name.lower() == "cookie":
        values += [part.strip() for value in values for part in value.split(";")]
    return values


def carries(name: str, value: str) -> Callable[[dict], bool]:
    """A request check: header `name` is `value` (for Cookie: one of its cookies is)."""
    return lambda headers: value in _header_values(headers, name)


def google_bearer(access_token: str, public_key_pem: str, client_email: str) -> Callable[[dict], bool]:
    """A request check as Google's APIs make it for a service account: `Bearer` with the
    access token the token endpoint issued, or a JWT the account's key signed
    (iss = sub = the account; unexpired), which the client libraries send instead."""
    from google.auth import exceptions, jwt

    def check(headers: dict) -> bool:
        for value in _header_values(headers, "Authorization"):
            scheme, _, token = value.partition(" ")
            if scheme != "Bearer":
                continue
            if token == access_token:
                return True
            try:
                claims = jwt.decode(token, certs=public_key_pem, verify=True)
            except (ValueError, exceptions.GoogleAuthError):
                continue
            if claims.get("iss") == claims.get("sub") == client_email:
                return True
        return False

    return check


class ContractError(Exception):
    """A request the real API would refuse."""


def check_kfp(value: Any, type_name: str, where: str = "body", owner: str = "", attr: str = "") -> None:
    """Raises ContractError unless `value` (parsed JSON) is a valid kfp_server_api `type_name`."""
    if value is None:
        return
    if type_name.startswith("list["):
        if not isinstance(value, list):
            raise ContractError(f"{where}: expected a list")
        for index, item in enumerate(value):
            check_kfp(item, type_name[5:-1], f"{where}[{index}]")
        return
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            raise ContractError(f"{where}: expected an object")
        inner = re.match(r"dict\(([^,]*), (.*)\)", type_name).group(2)
        for key, item in value.items():
            check_kfp(item, inner, f"{where}.{key}")
        return
    if type_name in _NATIVE:
        valid = {
            "str": isinstance(value, str) or ((owner, attr) in _INT64_AS_STRING and isinstance(value, int)),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "bool": isinstance(value, bool), "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "object": True, "datetime": isinstance(value, str), "date": isinstance(value, str),
        }[type_name]
        if not valid:
            raise ContractError(f"{where}: {value!r} is not a valid {type_name}")
        return
    model = getattr(kfp_server_api.models, type_name)
    allowed = getattr(model, "allowable_values", None)
    if allowed is not None:
        if value not in allowed:
            raise ContractError(f"{where}: {value!r} is not one of {allowed}")
        return
    if not isinstance(value, dict):
        raise ContractError(f"{where}: expected a {type_name} object")
    by_json_name = {json_name: name for name, json_name in model.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json_name:
            raise ContractError(f"{where}: unknown field {key!r} of {type_name}")
        name = by_json_name[key]
        check_kfp(item, model.openapi_types[name], f"{where}.{key}", type_name, name)


def check_pipeline_spec(spec: Any, where: str) -> None:
    """What the KFP API server requires of a pipeline spec (schema 2.1.0, strict)."""
    parsed = pipeline_spec_pb2.PipelineSpec()
    try:
        json_format.ParseDict(spec, parsed, ignore_unknown_fields=False)
    except (json_format.ParseError, TypeError) as error:
        raise ContractError(f"{where}: not a PipelineSpec: {error}") from None
    if parsed.schema_version != "2.1.0":
        raise ContractError(f"{where}: KFP only supports schema version 2.1.0, got {parsed.schema_version}")
    if not parsed.pipeline_info.name or not parsed.HasField("root"):
        raise ContractError(f"{where}: no pipelineInfo.name or root")


def check_parameters(values: Any, spec: Any, where: str) -> None:
    """Every parameter value names a parameter the spec's root declares, of its type (what
    the KFP driver and Vertex check before a run starts)."""
    declared = (spec or {}).get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    kinds = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": (int, float), "BOOLEAN": bool,
             "LIST": list, "STRUCT": dict}
    for name, value in (values or {}).items():
        if name not in declared:
            raise ContractError(f"{where}: parameter {name!r} is not an input of the pipeline")
        if not isinstance(value, kinds[declared[name]["parameterType"]]):
            raise ContractError(f"{where}: parameter {name!r} is not a {declared[name]['parameterType']}")


def parse_vertex(raw: bytes, message_type, where: str):
    """Strict parse of a request body into an aiplatform_v1 type (unknown fields rejected)."""
    message = message_type.pb()()
    try:
        json_format.Parse(raw, message, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        raise ContractError(f"Invalid JSON payload received. {where}: {error}") from None
    return message


def check_vertex_job(job, where: str) -> None:
    """What Vertex needs of a PipelineJob: a strict PipelineSpec and a gs:// pipeline root."""
    check_pipeline_spec(json_format.MessageToDict(job.pipeline_spec), f"{where}.pipelineSpec")
    check_parameters(json_format.MessageToDict(job.runtime_config).get("parameterValues"),
                     json_format.MessageToDict(job.pipeline_spec), f"{where}.runtimeConfig.parameterValues")
    if not job.runtime_config.gcs_output_directory.startswith("gs://"):
        raise ContractError(f"{where}.runtimeConfig.gcsOutputDirectory must be gs://")
    if job.service_account and "@" not in job.service_account:
        raise ContractError(f"{where}.serviceAccount is not an e-mail address")


@dataclasses.dataclass
class Recorded:
    method: str
    path: str
    query: dict
    body: Any
    status: int = 0
    headers: dict = dataclasses.field(default_factory=dict)


class ContractServer:
    """The endpoint, on a free loopback port, in a thread (a context manager)."""

    def __init__(self, authorize: Callable[[dict], bool] | None = None, multi_user: bool = False) -> None:
        self.authorize = authorize
        self.multi_user = multi_user
        self.requests: list[Recorded] = []
        self.errors: list[str] = []
        self.experiments: dict[str, dict] = {}
        self.buckets: set[str] = set()
        self.custom_jobs: dict[str, dict] = {}
        self._ids = itertools.count(1)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def __enter__(self) -> "ContractServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    def bodies(self, method: str, path: str) -> list:
        return [r.body for r in self.requests if (r.method, r.path) == (method, path)]

    def unauthenticated(self) -> list[tuple[str, str]]:
        """(method, path) of every request that lacked the credential (the token endpoint,
        which the credential comes from, aside)."""
        return [(r.method, r.path) for r in self.requests if r.path != "/token" and not self.authorize(r.headers)]

    def _new_id(self) -> str:
        return f"{next(self._ids):08d}-0000-4000-8000-000000000000"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body: Any = raw
                if raw and "form-urlencoded" not in self.headers.get("Content-Type", ""):
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = raw
                record = Recorded(self.command, parsed.path, query, body, headers=dict(self.headers.items()))
                try:
                    if server.authorize and parsed.path != "/token" and not server.authorize(record.headers):
                        status, payload = 401, {"error": {"code": 401, "status": "UNAUTHENTICATED",
                                                          "message": "Request is missing required authentication "
                                                          "credential."}}
                    else:
                        status, payload = server._route(self.command, parsed.path, query, body, raw)
                except ContractError as error:
                    server.errors.append(f"{self.command} {parsed.path}: {error}")
                    status = 400
                    payload = ({"error": str(error), "code": 3, "message": str(error)}
                               if parsed.path.startswith("/apis/") else
                               {"error": {"code": 400, "message": str(error), "status": "INVALID_ARGUMENT"}})
                record.status = status
                server.requests.append(record)
                out = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = _handle

        return Handler

    # ---- routes -----------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict, body: Any, raw: bytes) -> tuple[int, Any]:
        if path == "/token":  # OAuth 2.0 token endpoint of a service-account key
            return 200, {"access_token": "test-token", "token_type": "Bearer", "expires_in": 3600}
        if path.startswith(KUBE_PROXY):
            path = "/" + path[len(KUBE_PROXY):].lstrip("/")
        if path.startswith("/apis/v2beta1/"):
            return self._kfp(method, path[len("/apis/v2beta1/"):], query, body)
        match = re.fullmatch(r"/v1/projects/([^/]+)/locations/([^/]+)", path)
        if match and method == "GET":  # locations.get
            return 200, {"name": path[len("/v1/"):], "locationId": match.group(2)}
        match = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+)/(pipelineJobs|schedules)", path)
        if match and method == "POST":
            return self._vertex(match.group(1), match.group(2), query, raw)
        match = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+)/customJobs", path)
        if match and method == "POST":
            return self._custom_job(match.group(1), raw)
        if re.fullmatch(r"/v1/projects/[^/]+/locations/[^/]+/customJobs/[^/]+", path) and method == "GET":
            if path[len("/v1/"):] not in self.custom_jobs:
                return 404, {"error": {"code": 404, "message": f"{path} not found", "status": "NOT_FOUND"}}
            # A job is done when it is first looked at again.
            return 200, {**self.custom_jobs[path[len("/v1/"):]], "state": "JOB_STATE_SUCCEEDED"}
        if path.startswith("/storage/v1/"):
            return self._storage(method, path[len("/storage/v1/"):], body)
        return 404, {"error": {"code": 404, "message": f"no such endpoint {method} {path}", "status": "NOT_FOUND"}}

    def _kfp(self, method: str, route: str, query: dict, body: Any) -> tuple[int, Any]:
        if (method, route) == ("GET", "healthz"):
            return 200, {"multi_user": self.multi_user}
        if (method, route) == ("GET", "experiments"):
            wanted = None
            if "filter" in query:
                predicates = json.loads(query["filter"][0]).get("predicates", [])
                wanted = next((p.get("string_value", p.get("stringValue")) for p in predicates
                               if p.get("key") == "display_name"), None)
            if self.multi_user and not query.get("namespace", [""])[0]:
                raise ContractError("Invalid input error: In multi-user mode, ListExperiment requires "
                                    "filtering by namespace")
            found = [e for e in self.experiments.values() if wanted in (None, e["display_name"])
                     and e.get("namespace", "") == query.get("namespace", [""])[0]]
            return 200, ({"experiments": found, "total_size": len(found)} if found else {})
        if (method, route) == ("POST", "experiments"):
            check_kfp(body, "V2beta1Experiment")
            if not (body or {}).get("display_name"):
                raise ContractError("Experiment must have a non-empty name")
            if self.multi_user and not body.get("namespace"):
                raise ContractError("Invalid input error: In multi-user mode, experiment namespace must be set")
            experiment = {"experiment_id": self._new_id(), "display_name": body["display_name"],
                          "storage_state": "AVAILABLE", "namespace": body.get("namespace", "")}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if (method, route) in (("POST", "runs"), ("POST", "recurringruns")):
            model = "V2beta1Run" if route == "runs" else "V2beta1RecurringRun"
            check_kfp(body, model)
            if not body.get("display_name"):
                raise ContractError(f"{model}: the name cannot be empty")
            check_pipeline_spec(body.get("pipeline_spec"), "body.pipeline_spec")
            check_parameters((body.get("runtime_config") or {}).get("parameters"), body.get("pipeline_spec"),
                             "body.runtime_config.parameters")
            if body.get("experiment_id") and body["experiment_id"] not in self.experiments:
                raise ContractError(f"experiment {body['experiment_id']} not found")
            if route == "runs":
                return 200, {**body, "run_id": self._new_id(), "state": "PENDING"}
            if not 1 <= int(body.get("max_concurrency") or 0) <= 10:
                raise ContractError("max concurrency of a recurring run must be 1-10")
            try:
                cron.check_kfp_cron(body["trigger"]["cron_schedule"]["cron"])
            except (KeyError, cron.CronError) as error:
                raise ContractError(f"schedule cron is not a supported format: {error}") from None
            return 200, {**body, "recurring_run_id": self._new_id(), "status": "ENABLED"}
        raise ContractError(f"no such KFP endpoint {method} {route}")

    def _vertex(self, parent: str, collection: str, query: dict, raw: bytes) -> tuple[int, Any]:
        from google.cloud import aiplatform_v1

        if collection == "pipelineJobs":
            job = parse_vertex(raw, aiplatform_v1.PipelineJob, "pipelineJob")
            check_vertex_job(job, "pipelineJob")
            job_id = query.get("pipelineJobId", ["job"])[0]
            answer = json_format.MessageToDict(job)
            answer.update(name=f"{parent}/pipelineJobs/{job_id}", state="PIPELINE_STATE_PENDING")
            return 200, answer
        schedule = parse_vertex(raw, aiplatform_v1.Schedule, "schedule")
        try:
            cron.check_unix_cron(schedule.cron)
        except cron.CronError as error:
            raise ContractError(f"schedule.cron: {error}") from None
        if schedule.max_concurrent_run_count <= 0:
            raise ContractError("schedule.maxConcurrentRunCount must be positive")
        if schedule.create_pipeline_job_request.parent != parent:
            raise ContractError("schedule.createPipelineJobRequest.parent is not the schedule's parent")
        check_vertex_job(schedule.create_pipeline_job_request.pipeline_job, "schedule.createPipelineJobRequest.pipelineJob")
        answer = json_format.MessageToDict(schedule)
        answer.update(name=f"{parent}/schedules/{next(self._ids)}", state="ACTIVE")
        return 200, answer

    def _custom_job(self, parent: str, raw: bytes) -> tuple[int, Any]:
        """customJobs.create, with what Vertex requires of the worker pools."""
        from google.cloud import aiplatform_v1

        job = parse_vertex(raw, aiplatform_v1.CustomJob, "customJob")
        if not job.display_name:
            raise ContractError("customJob.displayName is required")
        pools = list(job.job_spec.worker_pool_specs)
        if not pools:
            raise ContractError("customJob.jobSpec.workerPoolSpecs must not be empty")
        for index, pool in enumerate(pools):
            where = f"customJob.jobSpec.workerPoolSpecs[{index}]"
            if not pool.machine_spec.machine_type:
                raise ContractError(f"{where}.machineSpec.machineType is required")
            if pool.replica_count < 1:
                raise ContractError(f"{where}.replicaCount must be positive")
            if not pool.container_spec.image_uri:
                raise ContractError(f"{where}.containerSpec.imageUri is required")
        if pools[0].replica_count != 1:
            raise ContractError("customJob.jobSpec.workerPoolSpecs[0].replicaCount must be 1 (the chief)")
        answer = json_format.MessageToDict(job)
        answer.update(name=f"{parent}/customJobs/{next(self._ids)}", state="JOB_STATE_PENDING")
        self.custom_jobs[answer["name"]] = answer
        return 200, answer

    def _storage(self, method: str, route: str, body: Any) -> tuple[int, Any]:
        match = re.fullmatch(r"b/([^/]+)(/iam)?", route)
        if match and match.group(2):
            return 200, body if method == "PUT" else {"kind": "storage#policy", "bindings": [], "etag": "CAE="}
        if match and method == "GET":
            if match.group(1) not in self.buckets:
                return 404, {"error": {"code": 404, "message": "The specified bucket does not exist."}}
            return 200, {"kind": "storage#bucket", "name": match.group(1), "projectNumber": "123"}
        if route == "b" and method == "POST":
            self.buckets.add(body["name"])
            return 200, {"kind": "storage#bucket", "name": body["name"], "projectNumber": "123"}
        raise ContractError(f"no such Cloud Storage endpoint {method} {route}")
