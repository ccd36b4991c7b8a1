"""TensorFlow Serving's REST JSON format, to and from numpy, checked against a signature.

Implements the request and response rules of TF Serving's `:predict` API
(https://www.tensorflow.org/tfx/serving/api_rest): the row format
(`{"instances": [...]}` -> `{"predictions": [...]}`) and the columnar format
(`{"inputs": ...}` -> `{"outputs": ...}`), binary strings as `{"b64": "..."}`, and
`signature_name` to pick the signature.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Any, Iterable, Mapping

import numpy as np

from histopath.data import features
from histopath.images import DEFAULT_MAX_DECODED_BYTES, MODEL_NATIVE_FORMATS, ImageError, decode, model_bytes, read_header
from histopath.serving.model_store import DEFAULT_SIGNATURE, SignatureInfo, TensorInfo

IMAGE_INPUT = "image_bytes"  # the contract's encoded-image input; its values are vetted
EXAMPLES_INPUT = "examples"  # serialized tf.train.Example with the image; vetted the same way
DEFAULT_MAX_BATCH = 64  # most instances in one request


class RequestError(ValueError):
    """The request does not fit the API or the signature (answered with HTTP 400)."""


@dataclasses.dataclass(frozen=True)
class PredictRequest:
    """A decoded predict request.

    Attributes:
      signature_name: the signature to run.
      inputs: one numpy array per signature input, batch first.
      row_format: True for `instances` (answer with `predictions`), False for `inputs`.
    """

    signature_name: str
    inputs: dict[str, np.ndarray]
    row_format: bool


def signature_name_of(body: Mapping[str, Any]) -> str:
    """The requested signature name (TF Serving's default when absent or empty)."""
    name = body.get("signature_name") or DEFAULT_SIGNATURE
    if not isinstance(name, str):
        raise RequestError("'signature_name' must be a string")
    return name


def decode_request(
    body: Any,
    signature: SignatureInfo,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_image_pixels: int | None = None,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> PredictRequest:
    """Decodes a TF Serving REST predict body into numpy inputs for `signature`.

    Args:
      body: the parsed JSON body.
      signature: the signature the request targets.
      max_batch: most instances accepted in one request.
      max_image_pixels: when set, every `image_bytes` value must be a PNG/JPEG/BMP/GIF
        whose header says at most this many pixels, and at most `max_decoded_bytes` once
        decoded.
      max_decoded_bytes: the decoded-bytes budget of each image.

    Returns:
      The decoded request.

    Raises:
      RequestError: malformed body, wrong input names, shapes or types, bad base64, or
        an undecodable/oversized image.
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    _check_depth(body)
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise RequestError("the request must have exactly one of 'instances' or 'inputs'")
    unknown = set(body) - {"instances", "inputs", "signature_name"}
    if unknown:
        raise RequestError(f"unknown request field(s): {', '.join(sorted(unknown))}")
    names = list(signature.inputs)
    if has_instances:
        inputs = _decode_rows(body["instances"], signature, names, max_batch)
    else:
        inputs = _decode_columns(body["inputs"], signature, names, max_batch)
    _check_images(inputs, max_image_pixels, max_decoded_bytes)
    return PredictRequest(signature.name, inputs, row_format=has_instances)


def check_input_names(given: Iterable[str], signature: SignatureInfo) -> list[str]:
    """The signature's input names, sorted.

    Raises:
      RequestError: `given` names other inputs than the signature's.
    """
    names = sorted(signature.inputs)
    if sorted(given) != names:
        raise RequestError(f"expected input(s) {names}, got {sorted(given)}")
    return names


def check_arrays(
    inputs: Mapping[str, np.ndarray],
    signature: SignatureInfo,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_image_pixels: int | None = None,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> dict[str, np.ndarray]:
    """Checks already-typed inputs (e.g. from a gRPC `TensorProto`) against a signature.

    Args:
      inputs: input name -> array.
      signature: the targeted signature.
      max_batch: largest accepted batch.
      max_image_pixels: as for `decode_request`.
      max_decoded_bytes: as for `decode_request`.

    Returns:
      The inputs, converted to the signature's dtypes.

    Raises:
      RequestError: wrong names, dtypes or shapes, too large a batch, or a bad image.
    """
    names = check_input_names(inputs, signature)
    checked = {}
    for name in names:
        spec, array = signature.inputs[name], np.asarray(inputs[name])
        is_string = array.dtype == object or array.dtype.kind in "SU"
        if (spec.tf_dtype == "string") != is_string or (
            not is_string and not np.can_cast(array.dtype, np.dtype(spec.dtype), "same_kind")
        ):
            raise RequestError(f"input '{name}': dtype {array.dtype} does not match {spec.tf_dtype}")
        _check_shape(array.shape, spec.shape, f"input '{name}'")
        if array.ndim and not 0 < array.shape[0] <= max_batch:
            raise RequestError(f"input '{name}': batch of {array.shape[0]} (1 to {max_batch} accepted)")
        checked[name] = array if is_string else array.astype(spec.dtype)
    _check_images(checked, max_image_pixels, max_decoded_bytes)
    return checked


def encoded_images(inputs: Mapping[str, np.ndarray]) -> list[bytes]:
    """The encoded images of a request: the `image_bytes` values, or the image feature of
    each `examples` value (a serialized tf.train.Example).

    Raises:
      RequestError: an example that does not parse or holds no single image.
    """
    if IMAGE_INPUT in inputs:
        return [bytes(value) for value in inputs[IMAGE_INPUT].reshape(-1)]
    if EXAMPLES_INPUT not in inputs:
        return []
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    found = []
    for index, value in enumerate(inputs[EXAMPLES_INPUT].reshape(-1)):
        try:
            example = example_pb2.Example.FromString(bytes(value))
        except DecodeError:
            raise RequestError(f"example {index}: not a serialized tf.train.Example") from None
        images = example.features.feature[features.IMAGE].bytes_list.value
        if len(images) != 1:
            raise RequestError(f"example {index}: expected one '{features.IMAGE}' bytes value, got {len(images)}")
        found.append(bytes(images[0]))
    return found


def _check_images(inputs: Mapping[str, np.ndarray], max_image_pixels: int | None,
                  max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> None:
    """Every image of the request (either signature) is a native format within the pixel
    limit and the decoded-bytes budget, read from its header before anything is decoded."""
    if max_image_pixels is None:
        return
    for index, value in enumerate(encoded_images(inputs)):
        try:
            read_header(value, allowed_formats=MODEL_NATIVE_FORMATS, max_pixels=max_image_pixels,
                        max_decoded_bytes=max_decoded_bytes)
        except ImageError as error:
            raise RequestError(f"image {index}: {error}") from None


def explain_failure(inputs: Mapping[str, np.ndarray], max_image_pixels: int,
                    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> str | None:
    """Why the graph refused a request, image by image ("image 1: the image is corrupt or
    truncated (...)"); None when every image decodes here."""
    for index, value in enumerate(encoded_images(inputs)):
        try:
            decode(value, allowed_formats=MODEL_NATIVE_FORMATS, max_pixels=max_image_pixels,
                   max_decoded_bytes=max_decoded_bytes)
        except ImageError as error:
            return f"image {index}: {error}"
    return None


def as_model_reads(inputs: Mapping[str, np.ndarray], max_image_pixels: int,
                   max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> dict[str, np.ndarray]:
    """The inputs with every image the graph would misread (a 16-bit PNG: the graph keeps
    the high byte of each sample) replaced by an 8-bit PNG of its pixels read by their real
    range (`histopath.images`), so the model server answers as the web app does.

    Raises:
      RequestError: such an image does not decode (which image, and why).
    """
    if IMAGE_INPUT in inputs:
        values = inputs[IMAGE_INPUT]
        converted = [_as_model_reads(bytes(value), index, max_image_pixels, max_decoded_bytes)
                     for index, value in enumerate(values.reshape(-1))]
        array = np.empty(len(converted), dtype=object)
        array[:] = converted
        return {**inputs, IMAGE_INPUT: array.reshape(values.shape)}
    if EXAMPLES_INPUT in inputs:
        from tensorflow.core.example import example_pb2

        values = inputs[EXAMPLES_INPUT]
        rewritten = []
        for index, value in enumerate(values.reshape(-1)):
            example = example_pb2.Example.FromString(bytes(value))
            images = example.features.feature[features.IMAGE].bytes_list.value
            image = _as_model_reads(bytes(images[0]), index, max_image_pixels, max_decoded_bytes)
            if image is not images[0]:
                images[0] = image
                value = example.SerializeToString()
            rewritten.append(value)
        array = np.empty(len(rewritten), dtype=object)
        array[:] = rewritten
        return {**inputs, EXAMPLES_INPUT: array.reshape(values.shape)}
    return dict(inputs)


def _as_model_reads(value: bytes, index: int, max_image_pixels: int, max_decoded_bytes: int) -> bytes:
    try:
        header = read_header(value, allowed_formats=MODEL_NATIVE_FORMATS, max_pixels=max_image_pixels,
                             max_decoded_bytes=max_decoded_bytes)
        if header.bits <= 8:
            return value
        return model_bytes(value, decode(value, allowed_formats=MODEL_NATIVE_FORMATS,
                                         max_pixels=max_image_pixels, max_decoded_bytes=max_decoded_bytes))
    except ImageError as error:
        raise RequestError(f"image {index}: {error}") from None


MAX_JSON_DEPTH = 32  # deepest nesting of lists/objects a request may have


def _check_depth(body: Any) -> None:
    """Refuses bodies nested deeper than `MAX_JSON_DEPTH` (walked without recursion)."""
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise RequestError(f"the request is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def check_tensor_proto(name: str, proto: Any, spec: TensorInfo, max_batch: int) -> None:
    """Checks a gRPC `TensorProto` against the signature BEFORE it becomes an array: its
    declared shape must be small enough and agree with the values it carries, so a tiny
    message cannot make the server allocate a huge tensor.

    Raises:
      RequestError: unknown rank, a dimension that does not fit the signature, too many
        elements, a dtype that is not the signature's, or values that do not fill the shape.
    """
    from tensorflow.python.framework import dtypes

    if proto.tensor_shape.unknown_rank:
        raise RequestError(f"input '{name}': the tensor has no shape")
    dims = tuple(int(dim.size) for dim in proto.tensor_shape.dim)
    _check_shape(dims, spec.shape, f"input '{name}'")
    if dims and not 0 < dims[0] <= max_batch:
        raise RequestError(f"input '{name}': batch of {dims[0]} (1 to {max_batch} accepted)")
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    dtype = dtypes.as_dtype(proto.dtype)
    if dtype.name != spec.tf_dtype:
        raise RequestError(f"input '{name}': dtype {dtype.name} does not match {spec.tf_dtype}")
    if dtype == dtypes.string:
        carried = len(proto.string_val)
    elif proto.tensor_content:
        carried = len(proto.tensor_content) // max(1, dtype.size)
    else:
        carried = max((len(getattr(proto, field.name)) for field, _ in proto.ListFields()
                       if field.name.endswith("_val")), default=0)
    if carried != count:
        raise RequestError(f"input '{name}': the shape {list(dims)} holds {count} value(s), the tensor carries {carried}")


def _decode_rows(instances, signature, names, max_batch) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise RequestError("'instances' must be a non-empty list")
    if len(instances) > max_batch:
        raise RequestError(f"too many instances: {len(instances)} (at most {max_batch})")
    columns: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for index, instance in enumerate(instances):
        if _is_named_object(instance):
            missing, extra = set(names) - set(instance), set(instance) - set(names)
            if missing or extra:
                raise RequestError(
                    f"instance {index}: expected input(s) {names}, got {sorted(instance)}"
                )
            values = instance
        elif len(names) == 1:
            values = {names[0]: instance}
        else:
            raise RequestError(
                f"instance {index}: the signature has several inputs {names}; each instance "
                "must be an object keyed by input name"
            )
        for name in names:
            spec = signature.inputs[name]
            array = _to_array(values[name], spec, f"instance {index}, input '{name}'")
            _check_shape(array.shape, spec.shape[1:], f"instance {index}, input '{name}'")
            columns[name].append(array)
    stacked = {name: np.stack(arrays) for name, arrays in columns.items()}
    for name, array in stacked.items():  # a signature may fix its batch, e.g. [1]
        _check_shape(array.shape, signature.inputs[name].shape, f"input '{name}'")
    return stacked


def _decode_columns(inputs, signature, names, max_batch) -> dict[str, np.ndarray]:
    if _is_named_object(inputs):
        missing, extra = set(names) - set(inputs), set(inputs) - set(names)
        if missing or extra:
            raise RequestError(f"expected input(s) {names}, got {sorted(inputs)}")
        values = inputs
    elif len(names) == 1:
        values = {names[0]: inputs}
    else:
        raise RequestError(f"the signature has several inputs {names}; 'inputs' must be an object")
    arrays = {}
    for name in names:
        spec = signature.inputs[name]
        array = _to_array(values[name], spec, f"input '{name}'")
        _check_shape(array.shape, spec.shape, f"input '{name}'")
        if array.ndim and array.shape[0] > max_batch:
            raise RequestError(f"too many values in input '{name}': {array.shape[0]} (at most {max_batch})")
        if array.ndim and array.shape[0] == 0:
            raise RequestError(f"input '{name}' is empty")
        arrays[name] = array
    return arrays


def _is_named_object(value: Any) -> bool:
    return isinstance(value, dict) and not (set(value) == {"b64"})


def _to_array(value: Any, spec: TensorInfo, where: str) -> np.ndarray:
    """Converts one JSON value (scalar or nested lists) to an array of the spec's dtype."""
    is_string = spec.tf_dtype == "string"
    leaves: list[Any] = []
    shape = _nested_shape(value, where)
    _flatten(value, leaves)
    converted = [_convert_leaf(leaf, spec, where) for leaf in leaves]
    dtype = object if is_string else np.dtype(spec.dtype)
    array = np.empty(len(converted), dtype=dtype)
    array[:] = converted
    return array.reshape(shape)


def _nested_shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    if not value:
        return (0,)
    shapes = {_nested_shape(item, where) for item in value}
    if len(shapes) != 1:
        raise RequestError(f"{where}: nested lists of different lengths (a tensor must be rectangular)")
    return (len(value),) + shapes.pop()


def _flatten(value: Any, out: list[Any]) -> None:
    if isinstance(value, list):
        for item in value:
            _flatten(item, out)
    else:
        out.append(value)


def _convert_leaf(leaf: Any, spec: TensorInfo, where: str) -> Any:
    if spec.tf_dtype == "string":
        if isinstance(leaf, dict) and set(leaf) == {"b64"} and isinstance(leaf["b64"], str):
            try:
                return base64.b64decode(leaf["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(f"{where}: 'b64' is not valid base64") from None
        if isinstance(leaf, str):
            return leaf.encode("utf-8")
        raise RequestError(f"{where}: expected a string or {{\"b64\": ...}}, got {type(leaf).__name__}")
    if spec.tf_dtype == "bool":
        if isinstance(leaf, bool):
            return leaf
        raise RequestError(f"{where}: expected true/false, got {type(leaf).__name__}")
    if isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
        raise RequestError(f"{where}: expected a number ({spec.tf_dtype}), got {type(leaf).__name__}")
    if spec.tf_dtype.startswith(("int", "uint")) and not float(leaf).is_integer():
        raise RequestError(f"{where}: expected an integer ({spec.tf_dtype}), got {leaf}")
    return leaf


def _check_shape(actual: tuple[int, ...], expected: tuple[int | None, ...], where: str) -> None:
    compatible = len(actual) == len(expected) and all(
        want is None or want == got for got, want in zip(actual, expected)
    )
    if not compatible:
        pretty = "[" + ", ".join("?" if dim is None else str(dim) for dim in expected) + "]"
        raise RequestError(f"{where}: shape {list(actual)} does not match the signature's {pretty}")


def encode_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> dict[str, Any]:
    """Formats signature outputs like TF Serving.

    Args:
      outputs: output name -> array (batch first).
      row_format: True answers `{"predictions": [...]}`, else `{"outputs": ...}`.

    Returns:
      The JSON-ready response body.
    """
    names = sorted(outputs)
    as_json = {name: _to_json(name, outputs[name]) for name in names}
    if not row_format:
        return {"outputs": as_json[names[0]] if len(names) == 1 else as_json}
    batch_sizes = {len(as_json[name]) if isinstance(as_json[name], list) else -1 for name in names}
    if len(batch_sizes) != 1 or -1 in batch_sizes:
        raise ValueError("outputs do not share a batch dimension; use the 'inputs' format")
    if len(names) == 1:
        return {"predictions": as_json[names[0]]}
    size = batch_sizes.pop()
    return {"predictions": [{name: as_json[name][row] for name in names} for row in range(size)]}


def _to_json(name: str, array: np.ndarray) -> Any:
    if array.dtype == object or array.dtype.kind == "S":
        flat = [_bytes_to_json(name, value) for value in array.reshape(-1)]
        nested = np.empty(len(flat), dtype=object)
        nested[:] = flat
        return nested.reshape(array.shape).tolist()
    return array.tolist()


def _bytes_to_json(name: str, value: bytes) -> Any:
    if not name.endswith("_bytes"):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(value).decode("ascii")}
