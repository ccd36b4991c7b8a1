"""A TensorFlow-Serving-compatible model server built on KServe's `ModelServer`.

No TensorFlow Serving binary can be installed on the development machines, so
`histopath model-server` serves the newest pushed version of the exported SavedModel with
TF Serving's APIs, on KServe's model server (FastAPI/uvicorn for REST, grpc.aio for gRPC):

REST (`--rest-port`, TF Serving's 8501):
  - `POST /v1/models/<name>:predict` -- KServe's V1 data plane (`instances`/`predictions`),
    with TF Serving's columnar `inputs`/`outputs` form and `signature_name` added here;
  - `POST /v1/models/<name>/versions/<v>:predict`;
  - `GET /v1/models/<name>[/versions/<v>]` -- TF Serving's model status JSON;
  - `GET /v1/models/<name>[/versions/<v>]/metadata` -- TF Serving's signature metadata.
gRPC (`--grpc-port`, TF Serving's 8500), on the same grpc.aio server as KServe's V2
  `GRPCInferenceService`: TF Serving's `PredictionService` (Predict, GetModelMetadata) and
  `ModelService.GetModelStatus` (see `grpc_service.py`).

A background thread polls the model folder and swaps in a newer version once it has fully
loaded (`model_store.ModelStore`). Bad requests get HTTP 400 (gRPC INVALID_ARGUMENT) with a
JSON `{"error": ...}` body, oversized ones HTTP 413, and the server keeps serving.
"""

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import pathlib
import signal
import sys
from typing import Any, Mapping

import numpy as np

from histopath.serving import tensor_codec
from histopath.serving.image_checks import DEFAULT_MAX_IMAGE_PIXELS
from histopath.serving.model_store import DEFAULT_SIGNATURE, VERSION_HEADER, LoadedModel, ModelStore

logger = logging.getLogger(__name__)

@dataclasses.dataclass
class ModelServerConfig:
    """Settings of one model server process."""

    model_base_path: pathlib.Path  # folder holding <model_name>/<version>/ SavedModels
    model_name: str  # the served model (URL path and gRPC model_spec.name)
    rest_port: int = 8501  # TF Serving's REST port
    grpc_port: int = 8500  # TF Serving's gRPC port
    host: str = "0.0.0.0"  # interface to listen on ("127.0.0.1" for loopback only)
    poll_interval_s: float = 5.0  # how often the model folder is checked for new versions
    max_request_bytes: int = 32 * 1024 * 1024  # larger REST bodies / gRPC messages -> 413
    max_batch: int = tensor_codec.DEFAULT_MAX_BATCH  # most instances per request
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # decompression-bomb guard per image
    inference_threads: int = 4  # threads running TensorFlow (TF releases the GIL)


def _import_kserve():
    """Imports kserve without letting it parse our command line (it reads sys.argv)."""
    saved_argv = sys.argv
    sys.argv = saved_argv[:1]
    try:
        import kserve
        import kserve.model_server
    finally:
        sys.argv = saved_argv
    return kserve


def _status_entry(version: int, state: str, code: str = "OK", message: str = "") -> dict:
    return {
        "version": str(version),
        "state": state,
        "status": {"error_code": code, "error_message": message},
    }


class ServedModel:
    """What the REST and gRPC front ends share: the store and the inference executor.

    Args:
      store: the hot-swapping model store.
      config: the server settings.
    """

    def __init__(self, store: ModelStore, config: ModelServerConfig):
        self.store = store
        self.config = config
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.inference_threads, thread_name_prefix="inference"
        )

    def resolve(self, version: int | None) -> LoadedModel:
        """The loaded model for a request (None = newest).

        Raises:
          LookupError: no version is loaded yet, or the requested one is not served.
        """
        loaded = self.store.current
        if loaded is None:
            raise LookupError(f"Could not find any versions of model {self.store.model_name}")
        if version is not None and version != loaded.version:
            raise LookupError(
                f"Servable not found for request: Specific({self.store.model_name}, {version})"
            )
        return loaded

    def status(self, version: int | None = None) -> dict:
        """TF Serving's `GetModelStatus` answer as JSON.

        Raises:
          LookupError: unknown version / nothing loaded.
        """
        entries = []
        loaded = self.store.current
        if loaded is not None:
            entries.append(_status_entry(loaded.version, "AVAILABLE"))
        for failure in self.store.failures:
            entries.append(_status_entry(failure.version, "END", "UNKNOWN", failure.message))
        if version is not None:
            entries = [entry for entry in entries if entry["version"] == str(version)]
            if not entries:
                raise LookupError(f"Could not find version {version} of model {self.store.model_name}")
        if not entries:
            raise LookupError(f"Could not find any versions of model {self.store.model_name}")
        return {"model_version_status": entries}

    def metadata(self, version: int | None = None) -> dict:
        """TF Serving's REST `/metadata` answer (signature definitions)."""
        from google.protobuf import json_format

        loaded = self.resolve(version)
        return {
            "model_spec": {"name": loaded.name, "signature_name": "", "version": str(loaded.version)},
            "metadata": {
                "signature_def": json_format.MessageToDict(
                    loaded.signature_def_map(), preserving_proto_field_name=True
                )
            },
        }

    def signature(self, loaded: LoadedModel, name: str):
        """The `SignatureInfo` named `name`.

        Raises:
          KeyError: the model has no such signature (message for the client).
        """
        signature = loaded.signatures.get(name or DEFAULT_SIGNATURE)
        if signature is None:
            raise KeyError(
                f"Serving signature name: \"{name}\" not found in signature def "
                f"(available: {', '.join(sorted(loaded.signatures))})"
            )
        return signature

    async def run(
        self, loaded: LoadedModel, signature_name: str, inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Runs the signature on the inference threads.

        Raises:
          tensor_codec.RequestError: the graph rejected the data (e.g. corrupt image).
        """
        import tensorflow as tf

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, loaded.run, signature_name, inputs)
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
            raise tensor_codec.RequestError(error.message.strip().splitlines()[0]) from None


def build_kserve_model(served: ServedModel):
    """Creates the `kserve.Model` serving TF Serving's V1 REST predict for `served`."""
    kserve = _import_kserve()
    from kserve.errors import InvalidInput, ModelNotReady

    class TFServingCompatibleModel(kserve.Model):
        """KServe model answering TF Serving's REST predict with the newest loaded version."""

        def __init__(self) -> None:
            super().__init__(served.store.model_name, return_response_headers=True)

        @property
        def ready(self) -> bool:  # kserve's health check: ready once a version is loaded
            return served.store.current is not None

        @ready.setter
        def ready(self, value: bool) -> None:  # kserve sets it; readiness is the store's
            pass

        def load(self) -> bool:
            served.store.refresh()
            return self.ready

        async def preprocess(self, payload, headers=None):
            if isinstance(payload, (bytes, bytearray)):  # sent without a JSON content type
                try:
                    payload = json.loads(payload)
                except (UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise InvalidInput(f"Unrecognized request format: {error}") from None
            return payload

        async def predict(self, payload, headers=None, response_headers=None):
            return await self.predict_json(payload, None, response_headers)

        async def predict_json(self, payload: Any, version: int | None, response_headers: dict | None):
            """Answers one TF Serving REST predict body (row or columnar format).

            Args:
              payload: the parsed JSON body.
              version: the version named in the URL, None for the newest.
              response_headers: filled with the `x-model-version` header.

            Raises:
              InvalidInput: a bad request (HTTP 400).
              ModelNotReady / ModelNotFound: nothing loaded (503) / another version (404).
            """
            try:
                loaded = served.resolve(version)
            except LookupError as error:
                if version is None:
                    raise ModelNotReady(served.store.model_name, str(error)) from None
                raise kserve.errors.ModelNotFound(served.store.model_name) from None
            try:
                signature_name = tensor_codec.signature_name_of(payload if isinstance(payload, dict) else {})
                signature = served.signature(loaded, signature_name)
                request = tensor_codec.decode_request(
                    payload,
                    signature,
                    max_batch=served.config.max_batch,
                    max_image_pixels=served.config.max_image_pixels,
                )
                outputs = await served.run(loaded, request.signature_name, request.inputs)
                body = tensor_codec.encode_response(outputs, request.row_format)
            except (tensor_codec.RequestError, KeyError, ValueError) as error:
                message = error.args[0] if isinstance(error, KeyError) else str(error)
                raise InvalidInput(message) from None
            if response_headers is not None:
                response_headers[VERSION_HEADER] = str(loaded.version)
            return body

    return TFServingCompatibleModel()


class BodySizeLimitMiddleware:
    """ASGI middleware answering 413 `{"error": ...}` to bodies over `max_bytes`.

    Reads the body (bounded) before the app sees it, so a chunked upload without a
    Content-Length cannot get past the limit either.

    Args:
      app: the wrapped ASGI app.
      max_bytes: largest accepted request body.
    """

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
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send) -> None:
        payload = json.dumps(
            {"error": f"request body larger than the limit of {self.max_bytes} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def register_rest_routes(app, served: ServedModel, model) -> None:
    """Adds TF Serving's status, metadata and versioned-predict routes to KServe's app.

    They are added before KServe registers its own routes, so `GET /v1/models/<name>`
    answers TF Serving's status JSON rather than KServe's `{"ready": ...}`.
    """
    from fastapi import APIRouter, Request
    from fastapi.responses import ORJSONResponse
    from kserve.errors import InvalidInput

    router = APIRouter(prefix="/v1/models")

    def error(status: int, message: str) -> ORJSONResponse:
        return ORJSONResponse(status_code=status, content={"error": message})

    def parse_version(text: str) -> int | None:
        return int(text) if text.isascii() and text.isdigit() else None

    def guarded(name: str, text_version: str | None, answer):
        if name != served.store.model_name:
            return error(404, f"Servable not found for request: Latest({name})")
        version = None
        if text_version is not None:
            version = parse_version(text_version)
            if version is None:
                return error(400, f"Invalid version '{text_version}': expected an integer")
        try:
            return answer(version)
        except LookupError as missing:
            return error(404, str(missing))

    async def status(model_name: str):
        return guarded(model_name, None, served.status)

    async def version_status(model_name: str, version: str):
        return guarded(model_name, version, served.status)

    async def metadata(model_name: str):
        return guarded(model_name, None, served.metadata)

    async def version_metadata(model_name: str, version: str):
        return guarded(model_name, version, served.metadata)

    async def version_predict(model_name: str, version: str, request: Request):
        if model_name != served.store.model_name:
            return error(404, f"Servable not found for request: Specific({model_name}, {version})")
        number = parse_version(version)
        if number is None:
            return error(400, f"Invalid version '{version}': expected an integer")
        raw = await request.body()
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as bad:
            raise InvalidInput(f"Unrecognized request format: {bad}") from None
        headers: dict[str, str] = {}
        try:
            served.resolve(number)
        except LookupError as missing:
            return error(404, str(missing))
        body = await model.predict_json(payload, number, headers)
        return ORJSONResponse(content=body, headers=headers)

    router.add_api_route("/{model_name}", status, methods=["GET"])
    router.add_api_route("/{model_name}/metadata", metadata, methods=["GET"])
    router.add_api_route("/{model_name}/versions/{version}", version_status, methods=["GET"])
    router.add_api_route("/{model_name}/versions/{version}/metadata", version_metadata, methods=["GET"])
    router.add_api_route(
        "/{model_name}/versions/{version}:predict", version_predict, methods=["POST"],
        response_model=None,
    )
    app.include_router(router)


def run_model_server(config: ModelServerConfig) -> None:
    """Starts the REST and gRPC servers and blocks until SIGINT/SIGTERM.

    Args:
      config: the server settings.
    """
    kserve = _import_kserve()
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    from histopath.serving.grpc_service import TFServingGRPCServer

    store = ModelStore(config.model_base_path, config.model_name)
    if not store.refresh():
        logger.warning(
            "no complete version under %s yet; waiting for one to be pushed", store.model_dir
        )
    served = ServedModel(store, config)
    model = build_kserve_model(served)
    register_rest_routes(app, served, model)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.max_request_bytes)

    class HistopathModelServer(kserve.ModelServer):
        """KServe's ModelServer with TF Serving's gRPC services on the gRPC port."""

        def start(self, models) -> None:  # noqa: D102  (see kserve.ModelServer.start)
            for each in models:
                self.register_model(each)
                each.enable_latency_logging = self.enable_latency_logging
            self._rest_server = RESTServer(
                FASTAPI_APP_IMPORT_STRING,
                self.dataplane,
                self.model_repository_extension,
                self.http_port,
                access_log_format=self.access_log_format,
                workers=1,
                grace_period=self.grace_period,
            )
            self._rest_server.config.host = config.host
            self._grpc_server = TFServingGRPCServer(
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs={
                    "grpc_max_send_message_length": config.max_request_bytes,
                    "grpc_max_receive_message_length": config.max_request_bytes,
                },
                grace_period=self.grace_period,
                served=served,
                host=config.host,
            )
            self.setup_event_loop()
            # uvicorn catches SIGINT/SIGTERM and re-raises them after shutting down: make
            # that re-raise harmless so the process exits 0 after the gRPC server stops.
            for each_signal in (signal.SIGINT, signal.SIGTERM):
                signal.signal(each_signal, lambda *_: None)
            asyncio.run(self._serve_both())

        async def _serve_both(self) -> None:
            grpc_task = asyncio.create_task(self._grpc_server.start(self.max_threads))
            await self._rest_server.start()  # returns after SIGINT/SIGTERM
            await self._grpc_server.stop()
            grpc_task.cancel()

    server = HistopathModelServer(
        http_port=config.rest_port,
        grpc_port=config.grpc_port,
        max_threads=config.inference_threads,
        enable_grpc=True,
        enable_latency_logging=False,
        grace_period=2,
    )
    store.start_polling(config.poll_interval_s)
    logger.info(
        "model server for %s: REST on %s:%d, gRPC on %s:%d",
        config.model_name, config.host, config.rest_port, config.host, config.grpc_port,
    )
    try:
        server.start([model])
    finally:
        store.stop_polling()
        served.executor.shutdown(wait=False, cancel_futures=True)
