"""tf.Transform preprocessing: the deterministic half of image preparation.

Transform runs once over the data, so it only does what is the same for every epoch:
decode, resize to `image_size`, scale and, when asked, normalise the stain
(`stain_normalization.normalize`: OD scaling, Macenko or Reinhard). Augmentation
is random and belongs to training. The Transform graph is embedded in every exported model
(`TransformedImagePreprocessor`), so serving prepares an image with the very graph that
prepared the training data.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from histopath.models import image_ops, stain_normalization
from histopath.data import features

TRANSFORMED_IMAGE = "image_xf"  # string: uint8 (image_size, image_size, 3) tensor, serialized
TRANSFORMED_LABEL = "label_xf"  # int64: 0 benign, 1 malignant
# Passed through unchanged when the records have them (IDC): where each patch lies on its
# patient's slide, for the Trainer's slide-context threshold (`slide_context.py`).
SLIDE_POSITION_FEATURES = (features.PATIENT_ID, features.PATCH_X, features.PATCH_Y)


def preprocessing_fn(inputs: dict[str, tf.Tensor], custom_config: dict[str, Any]) -> dict[str, tf.Tensor]:
    """tf.Transform preprocessing_fn: encoded image → resized image; label passed on.

    Args:
      inputs: raw features, batched; `image` and `label` are used, the
        `SLIDE_POSITION_FEATURES` present are passed on.
      custom_config: `{"image_size": int, "stain_normalization": method, ...}` from the
        Transform component; the method is a `stain_normalization.METHODS` name, or 0 / 1
        (none / od_scaling) as older pipelines passed it.

    Returns:
      The transformed features `image_xf` and `label_xf`, plus the slide positions.
    """
    size = int(custom_config["image_size"])
    images = image_ops.decode_and_resize(inputs[features.IMAGE], size)
    images = stain_normalization.normalize(images, custom_config.get("stain_normalization"))
    outputs = {TRANSFORMED_IMAGE: image_ops.quantize_to_bytes(images)}
    if features.LABEL in inputs:
        outputs[TRANSFORMED_LABEL] = tf.reshape(tf.cast(inputs[features.LABEL], tf.int64), [-1])
    # Passed on for the Trainer: the patient (patient-level cross-validation) and, for IDC,
    # the patch's place on its slide (slide context).
    outputs.update({name: tf.reshape(inputs[name], [-1]) for name in SLIDE_POSITION_FEATURES if name in inputs})
    return outputs


def transformed_to_model_input(serialized: tf.Tensor, transform_size: int, model_size: int) -> tf.Tensor:
    """Turns Transform's stored images into a model's float input `(n, s, s, 3)`.

    Args:
      serialized: the `image_xf` string tensor `(n,)` or `(n, 1)`.
      transform_size: the size Transform resized to.
      model_size: the model's input size; resized again only when it differs.
    """
    images = image_ops.dequantize_from_bytes(serialized, transform_size)
    if model_size != transform_size:
        images = image_ops.resize_and_scale(images, model_size)
    return images


class TransformedImagePreprocessor(tf.Module):
    """Encoded image bytes → model input, through the saved Transform graph.

    Attached to the exported model, so TF Serving callers send raw PNG/JPEG bytes and the
    model runs exactly the Transform graph used for its training data.

    Args:
      tf_transform_output: the `tft.TFTransformOutput` of the Transform component.
      transform_size: the size Transform resized to.
      model_size: the model's input size.
    """

    def __init__(self, tf_transform_output: Any, transform_size: int, model_size: int):
        super().__init__(name="transformed_image_preprocessor")
        self.tft_layer = tf_transform_output.transform_features_layer()
        image_spec = tf_transform_output.raw_feature_spec()[features.IMAGE]
        self._image_rank = 1 + len(getattr(image_spec, "shape", []) or [])
        self._transform_size = transform_size
        self._model_size = model_size

    def __call__(self, image_bytes: tf.Tensor) -> tf.Tensor:
        image_bytes = tf.reshape(image_bytes, [-1] + [1] * (self._image_rank - 1))
        transformed = self.tft_layer({features.IMAGE: image_bytes})
        return transformed_to_model_input(
            transformed[TRANSFORMED_IMAGE], self._transform_size, self._model_size
        )
