"""`histopath model-server`: the exported SavedModel served with TensorFlow Serving's API,
and only that API (no TF Serving binary can be installed on the development machines).

REST (`--rest-port`, TF Serving's 8501; FastAPI on uvicorn):
  - `POST /v1/models/<name>[/versions/<v>]:predict`: the row (`instances`) and columnar
    (`inputs`) formats, `signature_name`;
  - `POST .../:classify` / `:regress`: refused, as TF Serving refuses them for a model
    whose signatures are predict signatures;
  - `GET /v1/models/<name>[/versions/<v>]` (status) and `.../metadata`.
gRPC (`--grpc-port`, TF Serving's 8500): `PredictionService` and `ModelService`'s read
  call (`grpc_service.py`).

There is no load, unload or configuration endpoint: nobody who can reach the server can
take the model away. A model's status is AVAILABLE while the served version answers (it
is probed every `model_store.PROBE_INTERVAL_S`). Every input is checked before anything
is allocated for it: the body size, the batch, each image's header (both image signatures), and
for gRPC the declared tensor shape against the values carried. Bad requests get 400 (gRPC
INVALID_ARGUMENT) with `{"error": ...}` naming the problem; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import pathlib
import signal
from typing import Mapping, Optional

import numpy as np
from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import ORJSONResponse
from starlette.exceptions import HTTPException

from histopath.images import DEFAULT_MAX_DECODED_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from histopath.serving import http_guard, tensor_codec
from histopath.serving.model_store import DEFAULT_SIGNATURE, VERSION_HEADER, LoadedModel, ModelStore

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ModelServerConfig:
    """Settings of one model server process."""

    model_base_path: pathlib.Path  # folder holding <model_name>/<version>/ SavedModels
    model_name: str  # the served model (URL path and gRPC model_spec.name)
    rest_port: int = 8501  # TF Serving's REST port
    grpc_port: int = 8500  # TF Serving's gRPC port
    host: str = "127.0.0.1"  # interface to listen on (loopback only unless told otherwise)
    allowed_hosts: tuple[str, ...] = ()  # Host header names answered besides loopback and `host`
    poll_interval_s: float = 5.0  # how often the model folder is checked for new versions
    max_request_bytes: int = 32 * 1024 * 1024  # larger REST bodies / gRPC messages -> 413
    max_batch: int = tensor_codec.DEFAULT_MAX_BATCH  # most instances per request
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # decompression-bomb guard per image
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES  # bytes an image's samples may take decoded
    inference_threads: int = 4  # threads running TensorFlow (TF releases the GIL)


def _status_entry(version: int, state: str, code: str = "OK", message: str = "") -> dict:
    return {"version": str(version), "state": state, "status": {"error_code": code, "error_message": message}}


class ServedModel:
    """What the REST and gRPC front ends share: the store and the inference threads.

    Args:
      store: the hot-swapping model store.
      config: the server settings.
    """

    def __init__(self, store: ModelStore, config: ModelServerConfig):
        self.store = store
        self.config = config
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.inference_threads, thread_name_prefix="inference")

    def resolve(self, version: Optional[int]) -> LoadedModel:
        """The loaded model for a request (None = newest).

        Raises:
          LookupError: no version is loaded yet, or the requested one is not served.
        """
        loaded = self.store.current
        if loaded is None:
            raise LookupError(f"Could not find any versions of model {self.store.model_name}")
        if version is not None and version != loaded.version:
            raise LookupError(f"Servable not found for request: Specific({self.store.model_name}, {version})")
        return loaded

    def status(self, version: Optional[int] = None) -> dict:
        """TF Serving's `GetModelStatus` answer as JSON: the served version AVAILABLE while it
        answers (else UNAVAILABLE with the reason), newer versions that failed to load END.

        Raises:
          LookupError: unknown version / nothing loaded.
        """
        entries = []
        loaded = self.store.current
        if loaded is not None:
            problem = self.store.health_error
            entries.append(_status_entry(loaded.version, "UNAVAILABLE", "UNKNOWN", problem) if problem
                           else _status_entry(loaded.version, "AVAILABLE"))
        for failure in self.store.failures:
            entries.append(_status_entry(failure.version, "END", "UNKNOWN", failure.message))
        if version is not None:
            entries = [entry for entry in entries if entry["version"] == str(version)]
            if not entries:
                raise LookupError(f"Could not find version {version} of model {self.store.model_name}")
        if not entries:
            raise LookupError(f"Could not find any versions of model {self.store.model_name}")
        return {"model_version_status": entries}

    def metadata(self, version: Optional[int] = None) -> dict:
        """TF Serving's REST `/metadata` answer (signature definitions)."""
        from google.protobuf import json_format

        loaded = self.resolve(version)
        return {
            "model_spec": {"name": loaded.name, "signature_name": "", "version": str(loaded.version)},
            "metadata": {"signature_def": json_format.MessageToDict(
                loaded.signature_def_map(), preserving_proto_field_name=True)},
        }

    def signature(self, loaded: LoadedModel, name: str):
        """The `SignatureInfo` named `name`.

        Raises:
          KeyError: the model has no such signature (message for the client).
        """
        signature = loaded.signatures.get(name or DEFAULT_SIGNATURE)
        if signature is None:
            raise KeyError(f"Serving signature name: \"{name}\" not found in signature def "
                           f"(available: {', '.join(sorted(loaded.signatures))})")
        return signature

    async def run(self, loaded: LoadedModel, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict:
        """Runs the signature on the inference threads.

        Raises:
          tensor_codec.RequestError: the graph refused the data; the message says which
            image and why ("image 1: the image is corrupt or truncated (...)").
        """
        import tensorflow as tf

        from histopath.models.exported import error_reason

        loop = asyncio.get_running_loop()
        limits = (self.config.max_image_pixels, self.config.max_decoded_bytes)
        try:
            return await loop.run_in_executor(self.executor, self._run, loaded, signature_name, inputs)
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError, tf.errors.UnknownError) as error:
            explained = await loop.run_in_executor(self.executor, tensor_codec.explain_failure, inputs, *limits)
            raise tensor_codec.RequestError(explained or error_reason(error)) from None

    def _run(self, loaded: LoadedModel, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict:
        """On an inference thread: images the graph would misread (16-bit PNGs) as the web
        app reads them, then the signature."""
        readable = tensor_codec.as_model_reads(inputs, self.config.max_image_pixels, self.config.max_decoded_bytes)
        return loaded.run(signature_name, readable)


def _parse_json(body: bytes):
    """The request's JSON.

    Raises:
      tensor_codec.RequestError: nested too deeply for the parser.
      json.JSONDecodeError, UnicodeDecodeError: not JSON.
    """
    try:
        return json.loads(body)
    except RecursionError:
        raise tensor_codec.RequestError(
            f"the request is nested more than {tensor_codec.MAX_JSON_DEPTH} levels deep") from None


class BodySizeLimitMiddleware:
    """ASGI middleware answering 413 `{"error": ...}` to bodies over `max_bytes`, read
    bounded before the app sees them (a chunked upload cannot get past it either)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send) -> None:
        payload = json.dumps({"error": f"request body larger than the limit of {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def _error(status: int, message: str) -> ORJSONResponse:
    """An error answer in TF Serving's form."""
    return ORJSONResponse(status_code=status, content={"error": message})


def _version_of(text: Optional[str]) -> Optional[int]:
    """The version number in a URL (None: the newest).

    Raises:
      ValueError: not an integer.
    """
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"Invalid version '{text}': expected an integer")
    return int(text)


async def _predict(served: ServedModel, model_name: str, version: Optional[str], request: Request) -> ORJSONResponse:
    """`:predict` of one version (None: the newest): TF Serving's request and answer forms."""
    if model_name != served.store.model_name:
        return _error(404, f"Servable not found for request: Latest({model_name})")
    number = None
    try:
        number = _version_of(version)
        loaded = served.resolve(number)
    except ValueError as bad:
        return _error(400, str(bad))
    except LookupError as missing:
        return _error(404 if number is not None else 503, str(missing))
    try:
        payload = _parse_json(await request.body())
        signature = served.signature(loaded, tensor_codec.signature_name_of(payload if isinstance(payload, dict) else {}))
        decoded = tensor_codec.decode_request(payload, signature, max_batch=served.config.max_batch,
                                              max_image_pixels=served.config.max_image_pixels,
                                              max_decoded_bytes=served.config.max_decoded_bytes)
        outputs = await served.run(loaded, decoded.signature_name, decoded.inputs)
        body = tensor_codec.encode_response(outputs, decoded.row_format)
    except (UnicodeDecodeError, json.JSONDecodeError) as bad:
        return _error(400, f"Unrecognized request format: {bad}")
    except KeyError as bad:
        return _error(400, bad.args[0])
    except (tensor_codec.RequestError, ValueError) as bad:
        return _error(400, str(bad))
    return ORJSONResponse(body, headers={VERSION_HEADER: str(loaded.version)})


def build_app(served: ServedModel):
    """The REST front end: TF Serving's routes and nothing else."""
    app = FastAPI(title="histopath model server", docs_url=None, redoc_url=None, openapi_url=None)
    name = served.store.model_name

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # 404/405 in TF Serving's form
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    def answer(model_name: str, version: Optional[str], produce) -> ORJSONResponse:
        if model_name != name:
            return _error(404, f"Servable not found for request: Latest({model_name})")
        try:
            return ORJSONResponse(produce(_version_of(version)))
        except ValueError as bad:
            return _error(400, str(bad))
        except LookupError as missing:
            return _error(404, str(missing))

    @app.get("/v1/models/{model_name}")
    async def status(model_name: str):
        return answer(model_name, None, served.status)

    @app.get("/v1/models/{model_name}/versions/{version}")
    async def version_status(model_name: str, version: str):
        return answer(model_name, version, served.status)

    @app.get("/v1/models/{model_name}/metadata")
    async def metadata(model_name: str):
        return answer(model_name, None, served.metadata)

    @app.get("/v1/models/{model_name}/versions/{version}/metadata")
    async def version_metadata(model_name: str, version: str):
        return answer(model_name, version, served.metadata)

    @app.post("/v1/models/{model_name}:{method}")
    async def latest_method(model_name: str, method: str, request: Request):
        return await _method(model_name, None, method, request)

    @app.post("/v1/models/{model_name}/versions/{version}:{method}")
    async def version_method(model_name: str, version: str, method: str, request: Request):
        return await _method(model_name, version, method, request)

    async def _method(model_name: str, version: Optional[str], method: str, request: Request):
        if method == "predict":
            return await _predict(served, model_name, version, request)
        if method in ("classify", "regress"):
            return _error(400, f"model {name} has no {method} signature (its signatures are predict signatures: "
                               "use :predict)")
        return _error(404, f"unknown method :{method}")

    app.add_middleware(BodySizeLimitMiddleware, max_bytes=served.config.max_request_bytes)
    # Added last = run first: the request line, then the Host, then the body size.
    app.add_middleware(http_guard.HostGuard, allowed=http_guard.allowed_host_names(
        served.config.host, served.config.allowed_hosts))
    app.add_middleware(http_guard.RequestLineGuard)
    return app


def run_model_server(config: ModelServerConfig) -> None:
    """Starts the REST and gRPC servers and blocks until SIGINT/SIGTERM."""
    import uvicorn

    from histopath.serving.grpc_service import start_grpc_server

    store = ModelStore(config.model_base_path, config.model_name)
    if not store.refresh():
        logger.warning("no complete version under %s yet; waiting for one to be pushed", store.model_dir)
    served = ServedModel(store, config)
    rest = uvicorn.Server(uvicorn.Config(build_app(served), host=config.host, port=config.rest_port,
                                         log_config=None, lifespan="off", access_log=False))

    async def serve() -> None:
        grpc_server = await start_grpc_server(served, config.host, config.grpc_port, config.max_request_bytes)
        try:
            await rest.serve()  # returns after SIGINT/SIGTERM
        finally:
            await grpc_server.stop(grace=2)

    # uvicorn re-raises a captured SIGINT/SIGTERM after shutting down: make that harmless,
    # so that the process exits 0 once both servers have stopped.
    for each_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(each_signal, lambda *_: None)
    store.start_polling(config.poll_interval_s)
    logger.info("model server for %s: REST on %s:%d, gRPC on %s:%d",
                config.model_name, config.host, config.rest_port, config.host, config.grpc_port)
    try:
        asyncio.run(serve())
    finally:
        store.stop_polling()
        served.executor.shutdown(wait=False, cancel_futures=True)
