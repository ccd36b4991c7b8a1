"""TensorFlow Serving's gRPC API (`tensorflow.serving.PredictionService`, `ModelService`).

Added to the same grpc.aio server as KServe's V2 `GRPCInferenceService`, so one gRPC port
answers both TF Serving clients (`prediction_service_pb2_grpc.PredictionServiceStub`) and
KServe V2 clients. Errors are raised as `grpc_interceptor` exceptions, which KServe's
`ExceptionToStatusInterceptor` turns into the matching status codes.
"""

from __future__ import annotations

import logging
from concurrent import futures

from grpc import aio
from grpc_interceptor import exceptions as grpc_errors
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from histopath.serving import tensor_codec

logger = logging.getLogger(__name__)

_STATE_CODES = {
    "AVAILABLE": get_model_status_pb2.ModelVersionStatus.AVAILABLE,
    "END": get_model_status_pb2.ModelVersionStatus.END,
}


def _requested_version(model_spec) -> int | None:
    if model_spec.HasField("version"):
        return int(model_spec.version.value)
    if model_spec.version_label:
        raise grpc_errors.InvalidArgument("version labels are not supported; use a version number")
    return None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's `PredictionService`: Predict and GetModelMetadata.

    Args:
      served: the `model_server.ServedModel` shared with the REST front end.
    """

    def __init__(self, served):
        self.served = served

    def _loaded(self, model_spec):
        if model_spec.name != self.served.store.model_name:
            raise grpc_errors.NotFound(f"Servable not found for request: Latest({model_spec.name})")
        try:
            return self.served.resolve(_requested_version(model_spec))
        except LookupError as error:
            raise grpc_errors.NotFound(str(error)) from None

    async def Predict(self, request, context):  # noqa: N802  (gRPC method name)
        import tensorflow as tf

        loaded = self._loaded(request.model_spec)
        try:
            signature = self.served.signature(loaded, request.model_spec.signature_name)
        except KeyError as error:
            raise grpc_errors.InvalidArgument(error.args[0]) from None
        try:
            inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        except (TypeError, ValueError) as error:
            raise grpc_errors.InvalidArgument(f"unreadable input tensor: {error}") from None
        try:
            inputs = tensor_codec.check_arrays(
                inputs,
                signature,
                max_batch=self.served.config.max_batch,
                max_image_pixels=self.served.config.max_image_pixels,
            )
            outputs = await self.served.run(loaded, signature.name, inputs)
        except tensor_codec.RequestError as error:
            raise grpc_errors.InvalidArgument(str(error)) from None
        wanted = list(request.output_filter) or sorted(outputs)
        unknown = [name for name in wanted if name not in outputs]
        if unknown:
            raise grpc_errors.InvalidArgument(f"output_filter names unknown output(s) {unknown}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature.name
        for name in wanted:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    async def GetModelMetadata(self, request, context):  # noqa: N802
        loaded = self._loaded(request.model_spec)
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise grpc_errors.InvalidArgument(
                "metadata_field must be exactly ['signature_def'] (the only one supported)"
            )
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        response.metadata["signature_def"].Pack(loaded.signature_def_map())
        return response


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    """TF Serving's `ModelService.GetModelStatus` (config reloads are not supported)."""

    def __init__(self, served):
        self.served = served

    async def GetModelStatus(self, request, context):  # noqa: N802
        if request.model_spec.name != self.served.store.model_name:
            raise grpc_errors.NotFound(f"Could not find any versions of model {request.model_spec.name}")
        try:
            status = self.served.status(_requested_version(request.model_spec))
        except LookupError as error:
            raise grpc_errors.NotFound(str(error)) from None
        response = get_model_status_pb2.GetModelStatusResponse()
        for entry in status["model_version_status"]:
            version_status = response.model_version_status.add()
            version_status.version = int(entry["version"])
            version_status.state = _STATE_CODES[entry["state"]]
            ok = entry["status"]["error_code"] == "OK"
            version_status.status.error_code = 0 if ok else 2  # tensorflow.error.Code UNKNOWN
            version_status.status.error_message = entry["status"]["error_message"]
        return response


class TFServingGRPCServer(GRPCServer):
    """KServe's gRPC server (V2 protocol) plus TF Serving's services on the same port.

    Args:
      port: the gRPC port.
      data_plane, model_repository_extension, kwargs, grace_period: as for KServe's
        `GRPCServer`.
      served: the `model_server.ServedModel`.
      host: interface to listen on.
    """

    def __init__(self, port, data_plane, model_repository_extension, kwargs, grace_period, served, host):
        super().__init__(port, data_plane, model_repository_extension, kwargs, grace_period)
        self._served = served
        self._host = host

    async def start(self, max_workers):  # noqa: D102  (mirrors GRPCServer.start)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
            options=[
                ("grpc.max_send_message_length", self._kwargs["grpc_max_send_message_length"]),
                ("grpc.max_receive_message_length", self._kwargs["grpc_max_receive_message_length"]),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self._data_plane, self._model_repository_extension), self._server
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self._served), self._server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelStatusServicer(self._served), self._server
        )
        host = "[::]" if self._host in ("0.0.0.0", "::", "") else self._host
        self._server.add_insecure_port(f"{host}:{self._port}")
        logger.info("gRPC (TF Serving PredictionService + KServe V2) on %s:%d", host, self._port)
        await self._server.start()
        await self._server.wait_for_termination()

