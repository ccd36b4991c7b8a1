"""Offline checks of the Kubernetes manifests in serving/k8s/.

Built-in kinds are validated strictly (no unknown fields) against the Kubernetes OpenAPI
schemas shipped with `kubernetes-validate`; the KServe InferenceService against a JSON
schema of its essential fields (serving/k8s/schemas/) and, for unknown keys, against the
generated models of the installed `kserve` package. Then the manifests are checked against
each other (selectors, ports, names) and against the images they run.
"""

from __future__ import annotations

import json
import pathlib
import re
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
K8S_DIR = REPO / "serving" / "k8s"
KSERVE_FILE = K8S_DIR / "kserve-inferenceservice.yaml"
KSERVE_SCHEMA = K8S_DIR / "schemas" / "inferenceservice-v1beta1.schema.json"
WEBAPP_DOCKERFILE = REPO / "serving" / "docker" / "webapp.Dockerfile"
# The oldest Kubernetes still commonly run and the newest schema the package ships.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
NOT_KUBERNETES_OBJECTS = {"Kustomization", "InferenceService"}


def _load_documents(path: pathlib.Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def documents() -> dict[str, list[dict]]:
    """Every manifest file's documents, by file name."""
    files = sorted(K8S_DIR.glob("*.yaml"))
    assert files, f"no manifests in {K8S_DIR}"
    return {path.name: _load_documents(path) for path in files}


@pytest.fixture(scope="module")
def objects(documents) -> dict[tuple[str, str], dict]:
    """The Kubernetes objects of the kustomization, by (kind, name)."""
    kustomization = documents["kustomization.yaml"][0]
    found = {}
    for file_name in kustomization["resources"]:
        for doc in documents[file_name]:
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def _containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


def _env(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


# --- schema validation ------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_objects_match_the_kubernetes_schemas_strictly(documents, version):
    checked = 0
    for file_name, docs in documents.items():
        for doc in docs:
            if doc["kind"] in NOT_KUBERNETES_OBJECTS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{file_name} ({doc['kind']} {doc['metadata'].get('name')}) is not "
                            f"valid for Kubernetes {version}: {error.message} at "
                            f"{'.'.join(map(str, error.path))}")
            checked += 1
    assert checked >= 9


def test_schema_validation_rejects_a_misspelt_field():
    """Guards the test above: strict mode must catch a typo in a Deployment."""
    deployment = _load_documents(K8S_DIR / "webapp-deployment.yaml")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_core_manifest(documents):
    kustomization = documents["kustomization.yaml"][0]
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == "histopath"
    listed = set(kustomization["resources"])
    expected = set(documents) - {"kustomization.yaml", KSERVE_FILE.name, "kserve-networkpolicy.yaml"}
    assert listed == expected, "kustomization.yaml resources differ from the manifest files"
    # `images` entries must name images the manifests actually use.
    used = {
        container["image"].rsplit(":", 1)[0]
        for docs in documents.values()
        for doc in docs
        if doc["kind"] == "Deployment"
        for container in _containers(doc)
    }
    for image in kustomization.get("images", []):
        assert image["name"] in used, f"kustomization image {image['name']} is not used"


# --- KServe -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inference_service() -> dict:
    docs = _load_documents(KSERVE_FILE)
    assert len(docs) == 1
    return docs[0]


@pytest.fixture(scope="module")
def kserve_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(KSERVE_SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def test_inference_service_matches_the_kserve_schema(inference_service, kserve_validator):
    errors = sorted(kserve_validator.iter_errors(inference_service), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    tensorflow = inference_service["spec"]["predictor"]["tensorflow"]
    assert tensorflow["storageUri"]


@pytest.mark.parametrize(
    "change",
    [
        lambda isvc: isvc["spec"]["predictor"]["tensorflow"].pop("storageUri"),
        lambda isvc: isvc["spec"]["predictor"].update(sklearn={"storageUri": "gs://b/m"}),
        lambda isvc: isvc["spec"]["predictor"]["tensorflow"].update(storageUri="/local/path"),
        lambda isvc: isvc.update(apiVersion="serving.kserve.io/v1alpha1"),
        lambda isvc: isvc["metadata"].update(name="Histopath_Model"),
    ],
    ids=["no-storageUri", "two-frameworks", "bad-uri-scheme", "wrong-api-version", "bad-name"],
)
def test_kserve_schema_rejects_broken_services(inference_service, kserve_validator, change):
    broken = json.loads(json.dumps(inference_service))
    change(broken)
    assert list(kserve_validator.iter_errors(broken)), "the schema accepted a broken service"


def _unknown_keys(value, type_name: str, path: str, kserve_module, kubernetes_models) -> list[str]:
    """Keys of `value` that the generated OpenAPI model `type_name` does not define."""
    if type_name.startswith("list[") and isinstance(value, list):
        inner = type_name[5:-1]
        return [p for i, item in enumerate(value)
                for p in _unknown_keys(item, inner, f"{path}[{i}]", kserve_module, kubernetes_models)]
    if type_name.startswith("dict(") or type_name in ("str", "int", "bool", "float", "object", "datetime"):
        return []
    model = getattr(kserve_module, type_name, None) or getattr(kubernetes_models, type_name, None)
    if model is None or not isinstance(value, dict):
        return []  # e.g. Quantity: a string, checked by the JSON schema
    json_to_attr = {json_key: attr for attr, json_key in model.attribute_map.items()}
    problems = []
    for key, item in value.items():
        if key not in json_to_attr:
            problems.append(f"{path}.{key} (not a field of {type_name})")
            continue
        problems += _unknown_keys(item, model.openapi_types[json_to_attr[key]], f"{path}.{key}",
                                  kserve_module, kubernetes_models)
    return problems


def test_inference_service_has_only_fields_kserve_defines(inference_service):
    """Walks the manifest along kserve's generated models: a misspelt key fails here."""
    kserve = pytest.importorskip("kserve")
    from kubernetes.client import models as kubernetes_models

    assert _unknown_keys(inference_service, "V1beta1InferenceService", "", kserve, kubernetes_models) == []
    misspelt = json.loads(json.dumps(inference_service))
    misspelt["spec"]["predictor"]["tensorflow"]["storageURI"] = "gs://bucket/model"
    assert _unknown_keys(misspelt, "V1beta1InferenceService", "", kserve, kubernetes_models) == [
        ".spec.predictor.tensorflow.storageURI (not a field of V1beta1TFServingSpec)"
    ]


def test_inference_service_serves_the_same_model_as_tf_serving(inference_service, objects):
    tfserving = _containers(objects[("Deployment", "histopath-tfserving")])[0]
    model_name = _env(tfserving)["MODEL_NAME"]
    tensorflow = inference_service["spec"]["predictor"]["tensorflow"]
    # pvc://<claim>/<model_name>: the claim TF Serving mounts, the model's folder in it.
    uri = urlsplit(tensorflow["storageUri"])
    assert uri.scheme == "pvc"
    assert uri.netloc == "histopath-models"
    assert uri.path.strip("/") == model_name
    assert tensorflow["runtimeVersion"] == tfserving["image"].rsplit(":", 1)[1]


# --- consistency between the objects ------------------------------------------------------


def test_services_select_their_deployments_pods(objects):
    deployments = [doc for (kind, _), doc in objects.items() if kind == "Deployment"]
    for (kind, name), service in objects.items():
        if kind != "Service":
            continue
        selector = service["spec"]["selector"]
        matching = [
            d for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matching) == 1, f"Service {name} selects {len(matching)} Deployments"
        port_names = {p["name"] for c in _containers(matching[0]) for p in c["ports"]}
        port_numbers = {p["containerPort"] for c in _containers(matching[0]) for p in c["ports"]}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in port_names | port_numbers, f"Service {name} targets missing port {target}"
    for deployment in deployments:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_probes_use_declared_ports(objects):
    for (kind, name), deployment in objects.items():
        if kind != "Deployment":
            continue
        for container in _containers(deployment):
            ports = {p["name"] for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}
            probes = [container.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe")]
            assert all(probes[1:]), f"{name}/{container['name']} lacks readiness or liveness probe"
            for probe in filter(None, probes):
                assert probe["httpGet"]["port"] in ports, f"{name}: probe port not declared"


def test_config_maps_secrets_and_claims_referenced_exist(objects):
    for (kind, name), deployment in objects.items():
        if kind != "Deployment":
            continue
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in objects
                if "secretRef" in source:
                    assert ("Secret", source["secretRef"]["name"]) in objects
            for item in container.get("env", []):
                ref = item.get("valueFrom", {})
                for ref_kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if key in ref:
                        target = objects.get((ref_kind, ref[key]["name"]))
                        assert target is not None, f"{name}: {ref_kind} {ref[key]['name']} missing"
                        values = {**target.get("data", {}), **target.get("stringData", {})}
                        assert ref[key]["key"] in values, f"{name}: key {ref[key]['key']} missing"
            mounted = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in pod.get("volumes", [])}
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in objects, f"{name}: claim {claim} missing"


def test_webapp_reaches_tf_serving_through_its_service(objects):
    config = objects[("ConfigMap", "histopath-webapp-config")]["data"]
    url = urlsplit(config["TF_SERVING_URL"])
    service = objects[("Service", url.hostname)]  # KeyError: the URL names no Service
    rest = {p["name"]: p["port"] for p in service["spec"]["ports"]}["rest"]
    assert url.scheme == "http" and url.port == rest == 8501
    tfserving = _containers(objects[("Deployment", "histopath-tfserving")])[0]
    model_name = _env(tfserving)["MODEL_NAME"]
    assert config["HISTOPATH_MODEL_NAME"] == model_name
    # TF Serving's model-status endpoint decides readiness and liveness.
    for probe in ("readinessProbe", "livenessProbe"):
        assert tfserving[probe]["httpGet"]["path"] == f"/v1/models/{model_name}"
        assert tfserving[probe]["httpGet"]["port"] == "rest"
    ports = {p["name"]: p["containerPort"] for p in tfserving["ports"]}
    assert ports == {"grpc": 8500, "rest": 8501}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8500, "rest": 8501}
    mounts = {m["mountPath"]: m for m in tfserving["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert _env(tfserving)["MODEL_BASE_PATH"] == "/models"


def test_webapp_is_reached_through_an_https_ingress_only(objects):
    service = objects[("Service", "histopath-webapp")]
    assert service["spec"]["type"] == "ClusterIP"
    webapp = _containers(objects[("Deployment", "histopath-webapp")])[0]
    assert {p["name"]: p["containerPort"] for p in webapp["ports"]} == {"http": 8000}
    assert _env(webapp)["PORT"] == "8000"
    config = objects[("ConfigMap", "histopath-webapp-config")]["data"]
    allowed_hosts = config["ALLOWED_HOSTS"].split(",")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = webapp[probe]["httpGet"]
        assert get["path"] == "/healthz"
        hosts = [header["value"] for header in get.get("httpHeaders", []) if header["name"] == "Host"]
        assert hosts and hosts[0] in allowed_hosts, f"{probe}: Django would refuse the kubelet's Host"

    ingress = objects[("Ingress", "histopath-webapp")]
    tls_hosts = {host for entry in ingress["spec"]["tls"] for host in entry["hosts"]}
    assert all(entry["secretName"] for entry in ingress["spec"]["tls"])
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in tls_hosts, f"{rule['host']} is served without TLS"
        assert rule["host"] in allowed_hosts
        assert f"https://{rule['host']}" in config["CSRF_TRUSTED_ORIGINS"].split(",")
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "histopath-webapp"
            assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}
    assert config["BEHIND_HTTPS_PROXY"] == "1"  # Secure cookies, HSTS, http redirected


def test_model_server_is_cluster_internal_and_reached_by_the_web_app_only(objects, documents):
    service = objects[("Service", "histopath-tfserving")]
    assert service["spec"]["type"] == "ClusterIP"
    webapp_labels = objects[("Deployment", "histopath-webapp")]["spec"]["template"]["metadata"]["labels"]
    tfserving_labels = objects[("Deployment", "histopath-tfserving")]["spec"]["template"]["metadata"]["labels"]
    policies = [doc for (kind, _), doc in objects.items() if kind == "NetworkPolicy"]
    guarding = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= tfserving_labels.items()]
    assert len(guarding) == 1, "exactly one NetworkPolicy must select the model server's pods"
    policy = guarding[0]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    service_ports = {port["port"] for port in service["spec"]["ports"]}
    for rule in policy["ingress"]:
        assert [set(peer) for peer in rule["from"]] == [{"podSelector"}]  # no namespace or IP block
        assert rule["from"][0]["podSelector"]["matchLabels"].items() <= webapp_labels.items()
        assert {port["port"] for port in rule["ports"]} == service_ports
    kserve_policy = documents["kserve-networkpolicy.yaml"][0]["spec"]
    inference_service = _load_documents(KSERVE_FILE)[0]
    assert kserve_policy["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": inference_service["metadata"]["name"]}
    assert kserve_policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items() <= webapp_labels.items()


def test_secret_is_an_obvious_placeholder(objects):
    secret = objects[("Secret", "histopath-webapp-secret")]
    assert "REPLACE" in secret["stringData"]["SECRET_KEY"]
    text = (K8S_DIR / "webapp-secret.yaml").read_text()
    assert "kubectl" in text and "create secret" in text, "say how to replace the placeholder"


def test_pods_run_as_non_root_with_resources(objects):
    dockerfile = WEBAPP_DOCKERFILE.read_text()
    image_uid = int(re.search(r"^ARG APP_UID=(\d+)", dockerfile, re.M).group(1))
    for (kind, name), deployment in objects.items():
        if kind != "Deployment":
            continue
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name}: {bound}"
    webapp_pod = objects[("Deployment", "histopath-webapp")]["spec"]["template"]["spec"]
    assert webapp_pod["securityContext"]["runAsUser"] == image_uid


def test_webapp_settings_exist_in_the_app(objects):
    """Every variable the manifests set is one the web app (or the image) reads."""
    readers = "\n".join(
        (REPO / path).read_text()
        for path in ("serving/webapp/settings.py", "serving/cli.py", "serving/webapp/gunicorn_conf.py")
        if (REPO / path).exists()
    ) + WEBAPP_DOCKERFILE.read_text()
    config = objects[("ConfigMap", "histopath-webapp-config")]["data"]
    webapp = _containers(objects[("Deployment", "histopath-webapp")])[0]
    for name in [*config, *(item["name"] for item in webapp["env"])]:
        assert re.search(rf"\b{name}\b", readers), f"{name} is set but nothing reads it"
    assert config["DEBUG"] == "0"
