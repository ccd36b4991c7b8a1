"""Credentials and reachability for `histopath submit` / `schedule`.

Kubeflow Pipelines (`kfp.Client`, kfp 2.8). Which credential a request carries:

1. `--token TOKEN`: `Authorization: Bearer TOKEN` (e.g. `kubectl create token ...
   --audience=pipelines.kubeflow.org`, or an identity-aware proxy's token).
2. Otherwise a projected service-account token file: `$KF_PIPELINES_SA_TOKEN_PATH`, or
   kfp's in-cluster default `/var/run/secrets/kubeflow/pipelines/token` when it exists
   (a pod of a multi-user Kubeflow). The file is read again before every request.
3. `--cookie NAME=VALUE` is sent on every request as well (the session cookie of a
   Dex / oauth2-proxy login in front of a multi-user Kubeflow behind Istio).
4. `--kube-context CONTEXT` instead of `--kfp-host`: the API is reached through the
   Kubernetes API server's service proxy (`ml-pipeline` in namespace `kubeflow`) with
   that kubeconfig context's token (`KUBECONFIG` selects the file).

With an explicit `--kfp-host`, kfp.Client itself uses neither the kubeconfig nor the
in-cluster token; 1-3 are the ways to authenticate there. `--namespace` is the user's
profile namespace of a multi-user Kubeflow (experiments, and so runs, live in it).

Vertex AI (`google-cloud-aiplatform`): Application Default Credentials
(`google.auth.default`: `GOOGLE_APPLICATION_CREDENTIALS`, `gcloud auth application-default
login`, the metadata server) or `--key-file` (a service-account or external-account key),
scoped to cloud-platform and handed to each `PipelineJob`; aiplatform's global
configuration is restored after every call, so nothing carries over between a preview and
a submit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from typing import Any, Iterator, Optional

from histopath.errors import ConfigError, HistopathError

HOST_TIMEOUT_S = 5.0
VERTEX_TIMEOUT_S = 10.0
VERTEX_ENDPOINT_ENV = "HISTOPATH_VERTEX_API_ENDPOINT"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
KFP_NAMESPACE = "kubeflow"  # where Kubeflow Pipelines is installed (the service proxy's path)


class SubmitError(HistopathError):
    """The scheduler cannot be reached or refused the request."""


# ---- Kubeflow Pipelines -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KfpTarget:
    """Where a KFP request goes and what it carries.

    Attributes:
      host: the API's URL; None: through the Kubernetes API server of `kube_context`.
      token: a bearer token given on the command line.
      cookie: "NAME=VALUE[; NAME2=VALUE2]" sent with every request.
      namespace: the user namespace of a multi-user Kubeflow.
      kube_context: the kubeconfig context (with `host` None).
    """

    host: Optional[str] = None
    token: Optional[str] = None
    cookie: Optional[str] = None
    namespace: Optional[str] = None
    kube_context: Optional[str] = None

    @property
    def where(self) -> str:
        return self.host or f"the Kubernetes API server of kubeconfig context {self.kube_context!r}"

    def describe_credential(self) -> str:
        """Which credential is sent (never its value)."""
        parts = []
        if self.kube_context:
            parts.append(f"kubeconfig context {self.kube_context!r}")
        elif self.token:
            parts.append("bearer token from --token")
        elif sa_token_path():
            parts.append(f"service-account token file {sa_token_path()}")
        if self.cookie:
            parts.append("cookie from --cookie")
        return " + ".join(parts) or "none"


def sa_token_path() -> Optional[str]:
    """$KF_PIPELINES_SA_TOKEN_PATH, or kfp's in-cluster token file when it exists.

    Raises:
      ConfigError: the variable names a file that cannot be read.
    """
    from kfp import client as kfp_client

    path = os.environ.get(kfp_client.KF_PIPELINES_SA_TOKEN_ENV)
    if path:
        if not os.access(path, os.R_OK) or not os.path.isfile(path):
            raise ConfigError(f"{kfp_client.KF_PIPELINES_SA_TOKEN_ENV}={path}: no readable token file there")
        return path
    return kfp_client.KF_PIPELINES_SA_TOKEN_PATH if os.path.isfile(kfp_client.KF_PIPELINES_SA_TOKEN_PATH) else None


def kubeconfig_credentials(context: str):
    """kfp credentials from a kubeconfig context: (credentials, API-server URL, CA file, verify).

    kfp.Client's own kubeconfig route (host None) loses its service-proxy path whenever
    the `kubernetes` loader's token hook runs (it copies the cluster's bare URL back into
    the configuration before each request), so the proxy URL is given as the host and the
    user's token is handed over by this hook instead.

    Raises:
      ConfigError: no such context, or its user has no token (a client certificate).
    """
    import kubernetes
    from kfp.client import token_credentials_base

    loaded = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(client_configuration=loaded, context=context)
    except (kubernetes.config.ConfigException, OSError) as error:
        raise ConfigError(f"--kube-context {context}: {error}") from None
    if "authorization" not in loaded.api_key:
        raise ConfigError(f"--kube-context {context}: its user has no token (a client certificate is not passed "
                          "on by kfp.Client); use --kfp-host with --token")

    class KubeconfigCredentials(token_credentials_base.TokenCredentialsBase):
        def refresh_api_key_hook(self, config) -> None:
            if loaded.refresh_api_key_hook:  # an exec / auth-provider plugin renews an expired token
                loaded.refresh_api_key_hook(loaded)
            config.api_key["authorization"] = loaded.api_key["authorization"].removeprefix("Bearer ").strip()

    return KubeconfigCredentials(), loaded.host, loaded.ssl_ca_cert, loaded.verify_ssl


def kfp_client_arguments(target: KfpTarget) -> dict[str, Any]:
    """The keyword arguments of `kfp.Client` for `target`: always an explicit host, and
    the credential as a token or a `TokenCredentialsBase` hook."""
    from kfp.client import client as kfp_client
    from kfp.client import set_volume_credentials

    arguments: dict[str, Any] = {"host": target.host, "cookies": target.cookie}
    if target.kube_context:
        credentials, server, ca_file, verify = kubeconfig_credentials(target.kube_context)
        arguments.update(host=server.rstrip("/") + "/" + kfp_client.Client._KUBE_PROXY_PATH.format(KFP_NAMESPACE),
                         credentials=credentials, ssl_ca_cert=ca_file, verify_ssl=verify)
    elif target.token:
        arguments["existing_token"] = target.token
    elif sa_token_path():
        arguments["credentials"] = set_volume_credentials.ServiceAccountTokenVolumeCredentials(sa_token_path())
    return arguments


def _kfp_configuration(arguments: dict[str, Any]):
    """The kfp_server_api configuration kfp.Client builds from `arguments` (its
    `_load_config` for an explicit host), for the one check made before kfp.Client exists."""
    import kfp_server_api

    config = kfp_server_api.Configuration()
    config.host = arguments["host"].rstrip("/")
    if arguments.get("ssl_ca_cert"):
        config.ssl_ca_cert = arguments["ssl_ca_cert"]
    if arguments.get("verify_ssl") is not None:
        config.verify_ssl = arguments["verify_ssl"]
    if "existing_token" in arguments:
        config.api_key["authorization"] = arguments["existing_token"]
    elif "credentials" in arguments:  # as kfp.Client: a placeholder the hook replaces before each request
        config.api_key["authorization"] = "placeholder"
        config.refresh_api_key_hook = arguments["credentials"].refresh_api_key_hook
    if "authorization" in config.api_key:
        config.api_key_prefix["authorization"] = "Bearer"
    return config


def check_kfp(target: KfpTarget, timeout: float = HOST_TIMEOUT_S) -> bool:
    """One authenticated `GET /apis/v2beta1/healthz` with a short timeout (kfp.Client's own
    check retries five times, five seconds apart). Returns whether KFP is multi-user.

    Raises:
      SubmitError: no answer, or an error answer.
      ConfigError: a multi-user Kubeflow and no `--namespace`.
    """
    import kfp_server_api
    import urllib3

    client = kfp_server_api.ApiClient(_kfp_configuration(kfp_client_arguments(target)), cookie=target.cookie)
    try:
        health = kfp_server_api.HealthzServiceApi(client).get_healthz(_request_timeout=timeout)
    except kfp_server_api.ApiException as error:
        hint = " (check --token / --cookie / the token file)" if error.status in (401, 403) else ""
        raise SubmitError(f"Kubeflow Pipelines at {target.where} answered HTTP {error.status} "
                          f"{error.reason}{hint}") from None
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as error:
        raise SubmitError(f"cannot reach Kubeflow Pipelines at {target.where}: {_first_line(error)}") from None
    finally:
        client.close()
    if health.multi_user and not target.namespace:
        raise ConfigError(f"Kubeflow Pipelines at {target.where} is multi-user: pass --namespace "
                          "(your profile namespace)")
    return bool(health.multi_user)


# ---- Vertex AI -----------------------------------------------------------------------------
def vertex_credentials(key_file: Optional[str] = None):
    """Credentials scoped to cloud-platform: from `key_file`, or Application Default Credentials.

    Raises:
      ConfigError: no credentials found, or an unusable key file.
    """
    import google.auth
    from google.auth import exceptions

    try:
        if key_file:
            credentials, _ = google.auth.load_credentials_from_file(key_file, scopes=[CLOUD_PLATFORM_SCOPE])
        else:
            credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    except exceptions.DefaultCredentialsError as error:
        where = f"--key-file {key_file}" if key_file else "no Application Default Credentials"
        raise ConfigError(f"{where}: {str(error).splitlines()[0]} (run `gcloud auth application-default login`, "
                          "set GOOGLE_APPLICATION_CREDENTIALS or pass --key-file)") from None
    return credentials


def vertex_endpoint(region: str) -> str:
    """The Vertex AI API endpoint of `region` ($HISTOPATH_VERTEX_API_ENDPOINT overrides it)."""
    return os.environ.get(VERTEX_ENDPOINT_ENV) or f"{region}-aiplatform.googleapis.com"


class _BoundedRequest:
    """google-auth's requests transport with every call's timeout capped."""

    def __init__(self, timeout: float) -> None:
        from google.auth.transport import requests as auth_requests

        self._request = auth_requests.Request()
        self._timeout = timeout

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        timeout = self._timeout if timeout is None else min(timeout, self._timeout)
        return self._request(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)


def check_vertex(credentials, project: str, region: str, timeout: float = VERTEX_TIMEOUT_S) -> None:
    """Fetches a token and makes one authenticated `locations.get`, each bounded by `timeout`.

    Raises:
      SubmitError: the token endpoint or Vertex AI cannot be reached, or refuses.
    """
    import requests
    from google.auth import exceptions

    request = _BoundedRequest(timeout)
    try:
        credentials.refresh(request)
    except exceptions.GoogleAuthError as error:
        raise SubmitError(f"cannot get a Google access token: {_first_line(error)}") from None
    endpoint = vertex_endpoint(region)
    base = endpoint if "://" in endpoint else f"https://{endpoint}"
    url = f"{base.rstrip('/')}/v1/projects/{project}/locations/{region}"
    headers: dict[str, str] = {}
    credentials.apply(headers)
    try:
        response = requests.get(url, headers=headers, timeout=timeout)
    except requests.RequestException as error:
        raise SubmitError(f"cannot reach Vertex AI at {endpoint}: {_first_line(error)}") from None
    if response.status_code >= 400:
        raise SubmitError(f"Vertex AI at {endpoint} answered HTTP {response.status_code} on locations/{region}: "
                          f"{_error_message(response)}")


def _first_line(error: BaseException) -> str:
    """The reason of a (transport) error in a few words: the OS error or timeout urllib3
    buried in its message, else the first line."""
    text = str(error.args[0] if error.args and isinstance(error.args[0], str) else error)
    buried = re.search(r"\[Errno -?\d+\] [^'\")]+|Read timed out|Connection aborted", text)
    if buried:
        return buried.group(0).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _error_message(response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


@contextlib.contextmanager
def vertex_session(project: str, region: str, credentials=None) -> Iterator[None]:
    """aiplatform pointed at the region's endpoint over REST, with `credentials`, for the
    duration (the SDK's helpers that take no credentials, such as the project-number lookup
    of its bucket check, read the global ones); its global configuration is put back as it
    was afterwards."""
    from google.cloud import aiplatform
    from google.cloud.aiplatform import initializer

    saved = dict(vars(initializer.global_config))
    options: dict[str, Any] = {"project": project, "location": region, "api_endpoint": vertex_endpoint(region),
                               "api_transport": "rest"}
    if credentials is not None:
        options["credentials"] = credentials
    try:
        aiplatform.init(**options)
        yield
    finally:
        vars(initializer.global_config).clear()
        vars(initializer.global_config).update(saved)


@contextlib.contextmanager
def vertex_errors() -> Iterator[None]:
    """Turns the client's failures (API errors, transport errors, refused credentials) into
    one-line SubmitErrors."""
    import requests
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    try:
        yield
    except api_exceptions.GoogleAPICallError as error:
        raise SubmitError(f"Vertex AI refused the request: {error.message or error}") from None
    except (api_exceptions.RetryError, auth_exceptions.GoogleAuthError, requests.RequestException,
            ConnectionError, TimeoutError) as error:
        raise SubmitError(f"Vertex AI request failed: {_first_line(error)}") from None
