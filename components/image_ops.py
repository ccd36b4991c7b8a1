"""The one implementation of image decoding, resizing, scaling and MIL tiling.

Pure TensorFlow functions, used unchanged by the Transform `preprocessing_fn`, the
training input pipeline, the exported serving signatures and the web app's heat-map, so
training-time and serving-time preprocessing cannot drift apart.

Conventions: images are `float32` in `[0, 1]`, channels-last RGB.
"""

from __future__ import annotations

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import tensorflow as tf

# A tile whose pixels are nearly all bright and unsaturated is glass, not tissue.
BACKGROUND_BRIGHTNESS = 0.85  # mean of RGB above which a pixel counts as background
BACKGROUND_SATURATION = 0.10  # max-min of RGB below which a pixel counts as background
BACKGROUND_FRACTION = 0.90  # a tile with more background pixels than this is masked out


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decodes one encoded image (PNG, JPEG, BMP or GIF first frame) to RGB uint8.

    Args:
      image_bytes: scalar string tensor with the encoded file.

    Returns:
      `uint8` tensor of shape `(height, width, 3)`.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize_and_scale(image: tf.Tensor, height: int, width: int | None = None) -> tf.Tensor:
    """Resizes an image to `height x width` (bilinear, antialiased) and scales to [0, 1].

    Args:
      image: `uint8` or float tensor `(h, w, 3)` or a batch `(n, h, w, 3)`; uint8 is
        taken as 0..255, floats as already in [0, 1].
      height: output height in pixels.
      width: output width in pixels; defaults to `height`.

    Returns:
      `float32` tensor with the same rank as `image` and spatial size `(height, width)`.
    """
    width = height if width is None else width
    if image.dtype == tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.float32)
    else:
        image = tf.cast(image, tf.float32)
    image = tf.image.resize(image, [height, width], method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 1.0)


def decode_and_resize(image_bytes: tf.Tensor, height: int, width: int | None = None) -> tf.Tensor:
    """Decodes a batch of encoded images to `float32 (n, height, width, 3)` in [0, 1].

    Args:
      image_bytes: string tensor of shape `(n,)`, one encoded image per element; the
        images may have different sizes and formats.
      height: output height in pixels.
      width: output width in pixels; defaults to `height`.
    """
    width = height if width is None else width
    return tf.map_fn(
        lambda encoded: resize_and_scale(decode_image(encoded), height, width),
        tf.reshape(image_bytes, [-1]),
        fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
    )


def tile_image(image: tf.Tensor, tile_size: int) -> tf.Tensor:
    """Cuts images into non-overlapping `tile_size x tile_size` tiles, row-major.

    Args:
      image: float tensor `(n, h, w, c)` whose `h` and `w` are multiples of `tile_size`
        (resize first with `resize_and_scale`).
      tile_size: tile edge in pixels.

    Returns:
      Tensor `(n, (h // tile_size) * (w // tile_size), tile_size, tile_size, c)`; tile
      `k` sits at grid row `k // (w // tile_size)`, column `k % (w // tile_size)`.
    """
    shape = tf.shape(image)
    n, h, w, c = shape[0], shape[1], shape[2], shape[3]
    rows, cols = h // tile_size, w // tile_size
    tiles = tf.reshape(image, [n, rows, tile_size, cols, tile_size, c])
    tiles = tf.transpose(tiles, [0, 1, 3, 2, 4, 5])
    tiles = tf.reshape(tiles, [n, rows * cols, tile_size, tile_size, c])
    static_c = image.shape[-1]
    if image.shape[1] is not None and image.shape[2] is not None:
        static_n_tiles = (image.shape[1] // tile_size) * (image.shape[2] // tile_size)
        tiles.set_shape([image.shape[0], static_n_tiles, tile_size, tile_size, static_c])
    return tiles


def tissue_mask(tiles: tf.Tensor) -> tf.Tensor:
    """Marks the tiles that hold tissue (`True`) rather than bright empty glass.

    Args:
      tiles: float tensor `(..., tile, tile, 3)` in [0, 1].

    Returns:
      bool tensor `(...)`. A bag whose tiles are all background keeps all of them, so
      that no bag is ever empty.
    """
    brightness = tf.reduce_mean(tiles, axis=-1)
    saturation = tf.reduce_max(tiles, axis=-1) - tf.reduce_min(tiles, axis=-1)
    background = tf.logical_and(
        brightness > BACKGROUND_BRIGHTNESS, saturation < BACKGROUND_SATURATION
    )
    background_fraction = tf.reduce_mean(tf.cast(background, tf.float32), axis=[-2, -1])
    mask = background_fraction <= BACKGROUND_FRACTION
    any_tissue = tf.reduce_any(mask, axis=-1, keepdims=True)
    return tf.logical_or(mask, tf.logical_not(any_tissue))


def quantize_to_bytes(images: tf.Tensor) -> tf.Tensor:
    """Stores float images compactly: uint8 (rounded), one serialized tensor per image.

    Transform writes images this way (4x smaller than float32 records); the training input
    and the serving signature undo it with `dequantize_from_bytes`, so both see exactly the
    same pixels.

    Args:
      images: float tensor `(n, h, w, 3)` in [0, 1].

    Returns:
      string tensor `(n,)`.
    """
    as_uint8 = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)
    return tf.map_fn(tf.io.serialize_tensor, as_uint8, fn_output_signature=tf.string)


def dequantize_from_bytes(serialized: tf.Tensor, height: int, width: int | None = None) -> tf.Tensor:
    """Inverse of `quantize_to_bytes`: string `(n,)` → float32 `(n, height, width, 3)`."""
    width = height if width is None else width
    images = tf.map_fn(
        lambda item: tf.io.parse_tensor(item, tf.uint8),
        tf.reshape(serialized, [-1]),
        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )
    images = tf.reshape(images, [-1, height, width, 3])
    return tf.cast(images, tf.float32) / 255.0
