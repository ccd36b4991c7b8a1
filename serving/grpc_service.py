"""TensorFlow Serving's gRPC API: `tensorflow.serving.PredictionService` (Predict,
GetModelMetadata) and `ModelService.GetModelStatus`, on a grpc.aio server.

Nothing else is served: `HandleReloadConfigRequest` (which would let a client change what
is served) is refused, and Classify / Regress / MultiInference are refused as TF Serving
refuses them for a model with predict signatures only. A request's tensors are checked
against the signature before any of them becomes an array (`tensor_codec.check_tensor_proto`).
"""

from __future__ import annotations

import logging
from typing import Optional

import grpc
from grpc import aio
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from histopath.serving import tensor_codec

logger = logging.getLogger(__name__)

_STATES = {
    "AVAILABLE": get_model_status_pb2.ModelVersionStatus.AVAILABLE,
    "UNAVAILABLE": get_model_status_pb2.ModelVersionStatus.UNLOADING,
    "END": get_model_status_pb2.ModelVersionStatus.END,
}


def _requested_version(model_spec) -> Optional[int]:
    if model_spec.HasField("version"):
        return int(model_spec.version.value)
    if model_spec.version_label:
        raise ValueError("version labels are not supported; use a version number")
    return None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's `PredictionService`.

    Args:
      served: the `model_server.ServedModel` shared with the REST front end.
    """

    def __init__(self, served):
        self.served = served

    async def _loaded(self, model_spec, context):
        if model_spec.name != self.served.store.model_name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({model_spec.name})")
        try:
            return self.served.resolve(_requested_version(model_spec))
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except LookupError as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))

    async def Predict(self, request, context):  # noqa: N802  (gRPC method name)
        import tensorflow as tf

        loaded = await self._loaded(request.model_spec, context)
        try:
            signature = self.served.signature(loaded, request.model_spec.signature_name)
        except KeyError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.args[0])
        config = self.served.config
        try:
            tensor_codec.check_input_names(request.inputs, signature)
            for name, proto in request.inputs.items():  # before anything is allocated
                tensor_codec.check_tensor_proto(name, proto, signature.inputs[name], config.max_batch)
            arrays = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
            inputs = tensor_codec.check_arrays(arrays, signature, max_batch=config.max_batch,
                                               max_image_pixels=config.max_image_pixels,
                                               max_decoded_bytes=config.max_decoded_bytes)
            outputs = await self.served.run(loaded, signature.name, inputs)
        except tensor_codec.RequestError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        wanted = list(request.output_filter) or sorted(outputs)
        unknown = [name for name in wanted if name not in outputs]
        if unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"output_filter names unknown output(s) {unknown}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature.name
        for name in wanted:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    async def GetModelMetadata(self, request, context):  # noqa: N802
        loaded = await self._loaded(request.model_spec, context)
        if list(request.metadata_field) != ["signature_def"]:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "metadata_field must be exactly ['signature_def'] (the only one supported)")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        response.metadata["signature_def"].Pack(loaded.signature_def_map())
        return response

    async def _no_such_signature(self, context, method: str):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"model {self.served.store.model_name} has no {method} signature (use Predict)")

    async def Classify(self, request, context):  # noqa: N802
        await self._no_such_signature(context, "classify")

    async def Regress(self, request, context):  # noqa: N802
        await self._no_such_signature(context, "regress")

    async def MultiInference(self, request, context):  # noqa: N802
        await self._no_such_signature(context, "classify or regress")


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    """TF Serving's `ModelService`: the status is read; the configuration cannot be changed."""

    def __init__(self, served):
        self.served = served

    async def GetModelStatus(self, request, context):  # noqa: N802
        if request.model_spec.name != self.served.store.model_name:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"Could not find any versions of model {request.model_spec.name}")
        try:
            status = self.served.status(_requested_version(request.model_spec))
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except LookupError as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        response = get_model_status_pb2.GetModelStatusResponse()
        for entry in status["model_version_status"]:
            version_status = response.model_version_status.add()
            version_status.version = int(entry["version"])
            version_status.state = _STATES[entry["state"]]
            ok = entry["status"]["error_code"] == "OK"
            version_status.status.error_code = 0 if ok else 2  # tensorflow.error.Code UNKNOWN
            version_status.status.error_message = entry["status"]["error_message"]
        return response

    async def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            "this server serves one model from its folder; its configuration cannot be changed")


async def start_grpc_server(served, host: str, port: int, max_message_bytes: int) -> aio.Server:
    """Starts the gRPC server (TF Serving's two services only) and returns it."""
    server = aio.server(options=[("grpc.max_send_message_length", max_message_bytes),
                                 ("grpc.max_receive_message_length", max_message_bytes)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(served), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusServicer(served), server)
    address = "[::]" if host in ("0.0.0.0", "::", "") else host
    server.add_insecure_port(f"{address}:{port}")
    await server.start()
    logger.info("gRPC (TF Serving PredictionService, ModelService) on %s:%d", address, port)
    return server
