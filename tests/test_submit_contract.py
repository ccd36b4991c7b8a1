"""`histopath submit` / `schedule` against the APIs' published contracts.

No Kubeflow Pipelines backend or Vertex AI can run here, so these are CONTRACT tests, not
cluster tests: the real `kfp.Client` and `google-cloud-aiplatform` send their requests to
`contract_server.ContractServer`, which checks every body against the API's own generated
models (kfp-server-api for KFP v2beta1, aiplatform_v1 for Vertex) and answers as the API
documents. Vertex's credentials are Application Default Credentials (or `--key-file`) from
a service-account key whose token endpoint is that server; the server answers 401 to any
request without the credential, as the real APIs do, and the tests check that every
request of a submit or schedule carried it.
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest
from contract_server import KUBE_PROXY, ContractServer, carries, google_bearer

from histopath import cli
from histopath.pipeline.config import resolve
from histopath.pipeline.kubeflow_runner import compile_kubeflow

ROOT = "gs://histo-runs/weekly"
SERVICE_ACCOUNT = "pipelines@histo-project.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    config = resolve({"dataset": "breakhis", "data_dir": "gs://histo-data/breakhis", "output_dir": ROOT})
    return compile_kubeflow(config, str(tmp_path_factory.mktemp("spec") / "pipeline.yaml"), image="img:1")


@pytest.fixture(autouse=True)
def _no_user_kfp_context(tmp_path, monkeypatch):
    """kfp.Client reads ~/.config/kfp/context.json (a namespace, a cookie): not the user's here."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("KF_PIPELINES_SA_TOKEN_PATH", "KUBECONFIG", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    with ContractServer() as running:
        yield running


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_kfp_submit_creates_the_experiment_and_a_run_with_the_spec(server, spec, capsys):
    code, out, err = _run(capsys, "submit", "--spec", spec, "--kfp-host", server.url, "--experiment", "histopath",
                          "--name", "weekly-demo")
    assert code == 0, err
    assert server.errors == []
    assert server.calls()[-2:] == [("POST", "/apis/v2beta1/experiments"), ("POST", "/apis/v2beta1/runs")]
    (run,) = server.bodies("POST", "/apis/v2beta1/runs")
    assert run["display_name"] == "weekly-demo"
    assert run["runtime_config"]["pipeline_root"] == f"{ROOT}/pipeline_root"
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "histopath"
    assert run["experiment_id"] == next(iter(server.experiments))
    assert json.loads(out)["run_id"]


def test_kfp_schedule_sends_a_recurring_run_with_the_cron_in_kfps_form(server, spec, capsys):
    code, out, err = _run(capsys, "schedule", "--spec", spec, "--kfp-host", server.url, "--cron", "0 2 * * 1",
                          "--max-concurrency", "1", "--no-catchup")
    assert code == 0, err
    assert server.errors == []
    (recurring,) = server.bodies("POST", "/apis/v2beta1/recurringruns")
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * 1"}}  # seconds first: Mondays 02:00
    assert (recurring["max_concurrency"], recurring["no_catchup"], recurring["mode"]) == (1, True, "ENABLE")
    assert json.loads(out)["cron"] == "0 0 2 * * 1"


def test_dry_run_prints_exactly_what_would_be_sent_and_sends_nothing(server, spec, capsys):
    code, out, _ = _run(capsys, "schedule", "--spec", spec, "--kfp-host", server.url, "--cron", "0 2 * * 1",
                        "--dry-run")
    assert code == 0 and server.requests == []
    printed = json.loads(out)
    assert printed["path"] == "/apis/v2beta1/recurringruns"
    _run(capsys, "schedule", "--spec", spec, "--kfp-host", server.url, "--cron", "0 2 * * 1")
    (sent,) = server.bodies("POST", "/apis/v2beta1/recurringruns")
    assert {k: v for k, v in sent.items() if k != "experiment_id"} == printed["body"]


@pytest.mark.parametrize("argv, message", [
    (["schedule", "--cron", "0 25 * * 1", "--kfp-host", "{url}"], "--cron '0 25 * * 1': End of range (25)"),
    (["schedule", "--cron", "every monday", "--kfp-host", "{url}"], "--cron 'every monday': expected 5 fields"),
    (["schedule", "--cron", "TZ=Europe/Amsterdam 0 2 * * 1", "--kfp-host", "{url}"],
     "--cron 'TZ=Europe/Amsterdam 0 2 * * 1': Kubeflow Pipelines runs crons in UTC and takes no time-zone prefix"),
    (["submit", "--kfp-host", "http://127.0.0.1:9"], "cannot reach Kubeflow Pipelines at http://127.0.0.1:9"),
    (["submit", "--vertex", "histo-project", "--service-account", "x@y"], "--vertex takes PROJECT/REGION"),
    (["submit", "--kfp-host", "{url}", "--pipeline-root", "relative"], "relative local path"),
    (["submit", "--vertex", "p/europe-west4", "--pipeline-root", "/mnt/runs"], "needs a gs:// pipeline root"),
])
def test_bad_input_is_one_line_and_nothing_is_sent(server, spec, capsys, argv, message):
    code, _, err = _run(capsys, *[a.format(url=server.url) for a in argv], "--spec", spec)
    assert code == 1 and message in err and err.count("\n") == 1, err
    assert [call for call in server.calls() if call[1] != "/apis/v2beta1/healthz"] == []


def test_a_file_that_is_not_a_pipeline_spec_is_refused(server, tmp_path, capsys):
    for content, message in (("- a\n- b\n", "not a pipeline spec (expected a KFP PipelineSpec"),
                             ("a: [\n", "not a pipeline spec (not YAML"),
                             ("root: {}\npipelineInfo: {name: x}\ncolour: blue\n", "has no field named \"colour\"")):
        path = tmp_path / "spec.yaml"
        path.write_text(content)
        code, _, err = _run(capsys, "submit", "--spec", path, "--kfp-host", server.url)
        assert code == 1 and message in err, err
    assert server.requests == []


def _service_account_key(path, token_uri: str) -> tuple[str, str]:
    """A service-account key file at `path`; returns (its path, its public key PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "histo-project", "private_key_id": "1", "private_key": pem,
        "client_email": SERVICE_ACCOUNT, "client_id": "1", "token_uri": token_uri}))
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return str(path), public


@pytest.fixture
def vertex(tmp_path, monkeypatch):
    """Application Default Credentials from a service-account key whose token endpoint is the
    contract server; Cloud Storage and Vertex AI pointed at it too; the server refuses any
    request that carries neither the token it hands out nor a JWT the key signed."""
    with ContractServer() as running:
        key, public = _service_account_key(tmp_path / "key.json", f"{running.url}/token")
        running.authorize = google_bearer("test-token", public, SERVICE_ACCOUNT)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", key)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", running.url)
        monkeypatch.setenv("HISTOPATH_VERTEX_API_ENDPOINT", running.url)
        yield running


def test_vertex_submit_creates_a_pipeline_job(vertex, spec, capsys):
    code, out, err = _run(capsys, "submit", "--spec", spec, "--vertex", "histo-project/europe-west4",
                          "--service-account", SERVICE_ACCOUNT)
    assert code == 0, err
    assert vertex.errors == []
    parent = "/v1/projects/histo-project/locations/europe-west4"
    (job,) = vertex.bodies("POST", f"{parent}/pipelineJobs")
    assert job["serviceAccount"] == SERVICE_ACCOUNT
    assert job["runtimeConfig"]["gcsOutputDirectory"] == f"{ROOT}/pipeline_root"
    assert job["pipelineSpec"]["pipelineInfo"]["name"] == "histopath"
    assert json.loads(out)["resource_name"].startswith("projects/histo-project/locations/europe-west4/pipelineJobs/")


def test_vertex_schedule_creates_a_schedule_of_the_pipeline(vertex, spec, capsys):
    code, out, err = _run(capsys, "schedule", "--spec", spec, "--vertex", "histo-project/europe-west4",
                          "--cron", "TZ=Europe/Amsterdam 0 2 * * 1", "--service-account", SERVICE_ACCOUNT)
    assert code == 0, err
    assert vertex.errors == []
    (schedule,) = vertex.bodies("POST", "/v1/projects/histo-project/locations/europe-west4/schedules")
    assert schedule["cron"] == "TZ=Europe/Amsterdam 0 2 * * 1" and schedule["maxConcurrentRunCount"] == "1"
    job = schedule["createPipelineJobRequest"]["pipelineJob"]
    assert job["serviceAccount"] == SERVICE_ACCOUNT and job["pipelineSpec"]["pipelineInfo"]["name"] == "histopath"
    assert json.loads(out)["resource_name"].startswith("projects/histo-project/locations/europe-west4/schedules/")


def test_vertex_dry_run_needs_no_credentials_and_sends_nothing(server, spec, capsys, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent.json")
    code, out, err = _run(capsys, "submit", "--spec", spec, "--vertex", "histo-project/europe-west4", "--dry-run")
    assert code == 0, err
    body = json.loads(out)["body"]
    assert body["runtimeConfig"]["gcsOutputDirectory"] == f"{ROOT}/pipeline_root" and server.requests == []


# ---- credentials -----------------------------------------------------------------------
def test_vertex_every_request_carries_the_credential_after_a_preview(vertex, spec, capsys):
    from google.cloud.aiplatform import initializer

    target = ("--spec", spec, "--vertex", "histo-project/europe-west4", "--service-account", SERVICE_ACCOUNT)
    assert _run(capsys, "submit", *target, "--dry-run")[0] == 0  # the preview, in the same process
    assert _run(capsys, "submit", *target)[0] == 0
    assert _run(capsys, "schedule", *target, "--cron", "0 2 * * 1")[0] == 0
    assert vertex.errors == [] and vertex.unauthenticated() == []
    assert ("POST", "/token") in vertex.calls()
    called = set(vertex.calls())
    assert {("POST", "/v1/projects/histo-project/locations/europe-west4/pipelineJobs"),
            ("POST", "/v1/projects/histo-project/locations/europe-west4/schedules")} <= called
    assert any(path.startswith("/storage/v1/b/") for _, path in called)  # the bucket check too
    assert initializer.global_config._credentials is None  # nothing left behind in aiplatform


def test_vertex_key_file_instead_of_application_default_credentials(spec, tmp_path, capsys, monkeypatch):
    with ContractServer() as vertex:
        key, public = _service_account_key(tmp_path / "other-key.json", f"{vertex.url}/token")
        vertex.authorize = google_bearer("test-token", public, SERVICE_ACCOUNT)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", vertex.url)
        monkeypatch.setenv("HISTOPATH_VERTEX_API_ENDPOINT", vertex.url)
        code, _, err = _run(capsys, "submit", "--spec", spec, "--vertex", "histo-project/europe-west4",
                            "--key-file", key, "--service-account", SERVICE_ACCOUNT)
    assert code == 0, err
    assert vertex.unauthenticated() == [] and ("POST", "/token") in vertex.calls()


def _kubeconfig(url: str) -> None:
    """~/.kube/config (HOME is a test folder): the `kubernetes` package reads $KUBECONFIG once,
    when it is imported, and ~ when a kubeconfig is loaded."""
    path = pathlib.Path(os.environ["HOME"]) / ".kube" / "config"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "lab", "cluster": {"server": url}}],
        "users": [{"name": "me", "user": {"token": "kube-token"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "me"}},
                     {"name": "other", "context": {"cluster": "lab", "user": "me"}}]}))


@pytest.mark.parametrize("source", ["token", "sa-token-path", "cookie", "kubeconfig"])
@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_kfp_every_request_carries_the_credential(source, command, spec, tmp_path, capsys, monkeypatch):
    credential = {"token": ("Authorization", "Bearer user-token"),
                  "sa-token-path": ("Authorization", "Bearer sa-token"),
                  "cookie": ("Cookie", "authservice_session=s3cr3t"),
                  "kubeconfig": ("Authorization", "Bearer kube-token")}[source]
    with ContractServer(authorize=carries(*credential)) as server:
        target = ["--kfp-host", server.url]
        if source == "token":
            target += ["--token", "user-token"]
        elif source == "sa-token-path":
            (tmp_path / "token").write_text("sa-token\n")
            monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "token"))
        elif source == "cookie":
            target += ["--cookie", "authservice_session=s3cr3t"]
        else:
            _kubeconfig(server.url)
            target = ["--kube-context", "lab"]
        extra = ["--cron", "0 2 * * 1"] if command == "schedule" else []
        code, _, err = _run(capsys, command, "--spec", spec, *target, *extra)
        assert code == 0, err
        assert server.errors == [] and server.unauthenticated() == []
        prefix = KUBE_PROXY[:-1] if source == "kubeconfig" else ""  # through the API server's service proxy
        assert all(path.startswith(prefix) for _, path in server.calls()), server.calls()
        assert ("POST", prefix + "/apis/v2beta1/" + ("recurringruns" if extra else "runs")) in server.calls()


def test_kfp_multi_user_runs_in_the_given_namespace(spec, capsys):
    with ContractServer(authorize=carries("Authorization", "Bearer t"), multi_user=True) as server:
        code, _, err = _run(capsys, "submit", "--spec", spec, "--kfp-host", server.url, "--token", "t")
        assert code == 1 and "multi-user" in err and "--namespace" in err and err.count("\n") == 1, err
        assert [c for c in server.calls() if c[1] != "/apis/v2beta1/healthz"] == []
        code, _, err = _run(capsys, "submit", "--spec", spec, "--kfp-host", server.url, "--token", "t",
                            "--namespace", "team-a")
        assert code == 0, err
        assert server.errors == [] and server.unauthenticated() == []
        assert [e["namespace"] for e in server.experiments.values()] == ["team-a"]


def test_kfp_an_unreadable_token_path_is_one_line(spec, capsys, monkeypatch, server):
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", "/nonexistent/token")
    code, _, err = _run(capsys, "submit", "--spec", spec, "--kfp-host", server.url)
    assert code == 1 and "KF_PIPELINES_SA_TOKEN_PATH" in err and err.count("\n") == 1, err
    assert server.requests == []


# ---- failures are one line, soon ---------------------------------------------------------
@pytest.fixture
def silent_port():
    """A loopback port that accepts connections and never answers."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield listener.getsockname()[1]
    listener.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("endpoint, message", [
    ("refused", "cannot reach Vertex AI at http://127.0.0.1:"),
    ("silent", "cannot reach Vertex AI at http://127.0.0.1:"),
    ("token", "cannot get a Google access token"),
])
def test_vertex_unreachable_is_one_line_within_the_timeout(vertex, spec, tmp_path, capsys, monkeypatch, silent_port,
                                                             endpoint, message):
    import time

    from histopath.pipeline import submit_auth

    if endpoint == "token":  # the key's token endpoint does not answer
        key, _ = _service_account_key(tmp_path / "silent-key.json", f"http://127.0.0.1:{silent_port}/token")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", key)
    else:
        port = _closed_port() if endpoint == "refused" else silent_port
        monkeypatch.setenv("HISTOPATH_VERTEX_API_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    code, _, err = _run(capsys, "submit", "--spec", spec, "--vertex", "histo-project/europe-west4",
                        "--service-account", SERVICE_ACCOUNT)
    assert code == 1 and message in err and err.count("\n") == 1, err
    assert time.monotonic() - started < submit_auth.VERTEX_TIMEOUT_S + 5
    assert not any(path.endswith(("pipelineJobs", "schedules")) for _, path in vertex.calls())


def test_a_refused_vertex_credential_is_one_line(spec, tmp_path, capsys, monkeypatch):
    with ContractServer(authorize=carries("Authorization", "Bearer another-token")) as vertex:
        key, _ = _service_account_key(tmp_path / "key.json", f"{vertex.url}/token")
        for name, value in (("GOOGLE_APPLICATION_CREDENTIALS", key), ("STORAGE_EMULATOR_HOST", vertex.url),
                            ("HISTOPATH_VERTEX_API_ENDPOINT", vertex.url)):
            monkeypatch.setenv(name, value)
        code, _, err = _run(capsys, "schedule", "--spec", spec, "--vertex", "histo-project/europe-west4",
                            "--cron", "0 2 * * 1")
    assert code == 1 and "answered HTTP 401" in err and err.count("\n") == 1, err


def test_a_refused_kfp_credential_is_one_line(spec, capsys):
    with ContractServer(authorize=carries("Authorization", "Bearer right")) as server:
        code, _, err = _run(capsys, "submit", "--spec", spec, "--kfp-host", server.url, "--token", "wrong")
    assert code == 1 and "answered HTTP 401" in err and "--token" in err and err.count("\n") == 1, err


# ---- run-time parameters ---------------------------------------------------------------------
PARAMS = ["--param", "data_root=gs://other-data/slides", "--param", "serving_dir=gs://other-models/serving",
          "--param", "span_window=3", "--param", "min_new_patients=5"]


def _check_parameter_values(values: dict, spec_path: str) -> None:
    """The values carry the overrides, consistently, and keep every other compiled setting."""
    import yaml

    compiled = yaml.safe_load(open(spec_path))["root"]["inputDefinitions"]["parameters"]
    assert values["data_root"] == "gs://other-data/slides"
    assert values["serving_model_dir"] == "gs://other-models/serving/histopath"
    assert json.loads(values["push_destination"]) == {"filesystem": {"base_directory": values["serving_model_dir"]}}
    settings, default = json.loads(values["ingest_settings"]), json.loads(compiled["ingest_settings"]["defaultValue"])
    assert (settings["window"], settings["min_new_patients"]) == ("3", 5)
    assert {k: v for k, v in settings.items() if k not in ("window", "min_new_patients")} == \
        {k: v for k, v in default.items() if k not in ("window", "min_new_patients")}


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_kfp_run_parameters_are_sent_with_the_run(server, spec, capsys, command):
    extra = ["--cron", "0 2 * * 1"] if command == "schedule" else []
    code, _, err = _run(capsys, command, "--spec", spec, "--kfp-host", server.url, *extra, *PARAMS)
    assert code == 0, err
    assert server.errors == []
    (body,) = server.bodies("POST", "/apis/v2beta1/" + ("recurringruns" if extra else "runs"))
    _check_parameter_values(body["runtime_config"]["parameters"], spec)


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_vertex_run_parameters_are_sent_with_the_job(vertex, spec, capsys, command):
    extra = ["--cron", "0 2 * * 1"] if command == "schedule" else []
    code, out, err = _run(capsys, command, "--spec", spec, "--vertex", "histo-project/europe-west4",
                          "--service-account", SERVICE_ACCOUNT, *extra, *PARAMS)
    assert code == 0, err
    assert vertex.errors == []
    parent = "/v1/projects/histo-project/locations/europe-west4"
    if extra:
        (schedule,) = vertex.bodies("POST", f"{parent}/schedules")
        job = schedule["createPipelineJobRequest"]["pipelineJob"]
    else:
        (job,) = vertex.bodies("POST", f"{parent}/pipelineJobs")
    _check_parameter_values(job["runtimeConfig"]["parameterValues"], spec)


@pytest.mark.parametrize("param, message", [
    ("colour=blue", "--param colour: unknown; choose from data_root, serving_dir"),
    ("preset=idc-mil", "--param preset=idc-mil: data set idc (the spec's: breakhis); models ['mil'] (the spec's: "
                       "['densenet', 'mil']); a preset cannot change the pipeline's graph: compile a spec with "
                       "--preset idc-mil"),
    ("preset=breakhis-from-idc", "--param preset=breakhis-from-idc: it needs densenet.weights"),
    ("preset=nope", "unknown preset 'nope'"),
    ("span_window=0", "span window must be at least 1 span"),
    ("min_new_patients=-1", "--param min_new_patients='-1': a whole number"),
    ("data_root=slides", "--param data_root='slides': give a URI"),
    ("span_window", "--param 'span_window': expected KEY=VALUE"),
])
def test_a_bad_run_parameter_is_one_line_and_nothing_is_sent(server, spec, capsys, param, message):
    code, _, err = _run(capsys, "submit", "--spec", spec, "--kfp-host", server.url, "--param", param)
    assert code == 1 and message in err and err.count("\n") == 1, err
    assert server.requests == []


def test_a_preset_run_parameter_reaches_every_task_it_sets(spec, tmp_path):
    """`--param preset=demo` on the spec compiled for the data set's defaults: the values
    sent, then the executor inputs the KFP driver builds from them (`spec_runner`, which
    builds them as the driver does) carry the demo preset's settings; the graph and the
    model's name stay the spec's."""
    import collections

    import yaml
    from google.protobuf import json_format

    from histopath.pipeline import config as pipeline_config, presets, run_parameters, spec_runner
    from histopath.pipeline.eval_config import build_eval_config

    compiled = yaml.safe_load(open(spec))
    values = run_parameters.values(compiled, run_parameters.parse(["preset=demo", "span_window=2"]))
    demo = pipeline_config.resolve(presets.layer("demo"), {"data_dir": "unused", "output_dir": "unused"})
    from kfp.pipeline_spec import pipeline_spec_pb2

    runner = spec_runner.SpecRun(json_format.ParseDict(compiled, pipeline_spec_pb2.PipelineSpec()), str(tmp_path),
                                 runner="subprocess", parameters=values)
    # No task ran: every upstream artifact is an empty one (only the parameters are read here).
    runner.outputs = collections.defaultdict(lambda: collections.defaultdict(pipeline_spec_pb2.RuntimeArtifact))
    defaults = run_parameters.defaults(compiled)

    def task_parameters(task_name: str) -> dict:
        task = runner.spec.root.dag.tasks[task_name]
        component = runner.spec.components[task.component_ref.name]
        return json_format.MessageToDict(runner.executor_input(task_name, task, component).inputs)["parameterValues"]

    for kind in ("densenet", "mil"):
        settings = json.loads(task_parameters(f"trainer_{kind}")["custom_config"])
        wanted = pipeline_config.model_settings(demo, kind)
        assert settings["training"] == json.loads(json.dumps(wanted["training"]))
        assert settings["folds"] == 0 and settings["model_name"] == "histopath"
        before = json.loads(defaults[f"trainer_{kind}_settings"])
        assert settings["code_fingerprint"] == before["code_fingerprint"] and before["folds"] == 5
        evaluation = json.loads(task_parameters(f"evaluator_{kind}")["eval_config"])
        assert evaluation == json.loads(json_format.MessageToJson(build_eval_config(demo),
                                                                  preserving_proto_field_name=True))
    assert json.loads(task_parameters("Transform")["custom_config"])["image_size"] == demo.image_size == 128
    assert task_parameters("SelectWinner")["rule"] == "test_auc"
    ingest = json.loads(task_parameters("IngestImages")["settings"])
    assert ingest["window"] == "2" and ingest["seed"] == demo.seed
