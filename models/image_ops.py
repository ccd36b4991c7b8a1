"""The one implementation of image decoding, resizing, scaling, MIL tiling, the symmetries
of the square (test-time averaging) and of the H&E stain colour space (stain
normalisation, and the stain augmentation built on it).

Pure TensorFlow functions, used unchanged by the Transform `preprocessing_fn`, the
training input pipeline, the exported serving signatures and the web app's heat-map, so
training-time and serving-time preprocessing cannot drift apart.

Conventions: images are `float32` in `[0, 1]`, channels-last RGB.
"""

from __future__ import annotations

import math

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


SQUARE_SYMMETRIES = 8  # 4 quarter turns, each with or without a left-right mirror


def square_symmetry(images: tf.Tensor, index: int) -> tf.Tensor:
    """Applies symmetry `index` of the square: `index // 2` counter-clockwise quarter
    turns, then a left-right mirror when `index` is odd (0 is the identity).

    Args:
      images: tensor `(n, s, s, c)` with square images.
      index: 0 to `SQUARE_SYMMETRIES - 1` (a Python int).
    """
    turned = tf.image.rot90(images, index // 2)
    return tf.image.flip_left_right(turned) if index % 2 else turned


def invert_square_symmetry(images: tf.Tensor, index: int) -> tf.Tensor:
    """Undoes `square_symmetry(images, index)`: the mirror first, then the turns back.

    Maps a per-tile map computed on a transformed image (e.g. a MIL attention grid as
    `(n, rows, cols, 1)`) back onto the original image's tile grid.
    """
    unmirrored = tf.image.flip_left_right(images) if index % 2 else images
    return tf.image.rot90(unmirrored, (4 - index // 2) % 4)


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


# An image is answered only when enough of it is tissue. A pixel counts as tissue when its
# colour is saturated at all: H&E stains even pale tissue, while glass, blank, grey and black
# pixels are unsaturated. The bar is lower than the tile mask's `BACKGROUND_SATURATION`, which
# ranks tiles within an image; here a whole pale image must not be called empty.
TISSUE_PIXEL_SATURATION = 0.05  # max-min of RGB from which a pixel counts as stained
MIN_IMAGE_TISSUE_FRACTION = 0.05  # below this share of stained pixels an image has "no tissue"


def tissue_fraction(images: tf.Tensor) -> tf.Tensor:
    """The share of stained pixels of each image: pixels whose colour is saturated (max - min
    of RGB at least `TISSUE_PIXEL_SATURATION`), which glass, black and grey are not.

    Args:
      images: float tensor `(n, h, w, 3)` in [0, 1].

    Returns:
      float32 `(n,)` in [0, 1].
    """
    images = tf.cast(images, tf.float32)
    saturation = tf.reduce_max(images, axis=-1) - tf.reduce_min(images, axis=-1)
    return tf.reduce_mean(tf.cast(saturation >= TISSUE_PIXEL_SATURATION, tf.float32), axis=[1, 2])


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


# Ruifrok & Johnston (2001) stain vectors, as in scikit-image's `rgb2hed`.
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
_LOG_ADJUST = math.log(1e-6)


def _mix_channels(images: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
    """`images[..., c] @ matrix[c, d]` over the last axis.

    Not `tf.einsum("...c,cd->...d")`: with oneDNN on AVX-512/AMX CPUs (TF 2.16) that
    ellipsis einsum returns wrong values once there are 64 or more pixels (measured
    here; cf. tensorflow/tensorflow#61510, oneDNN matmul errors on AVX-512 CPUs).
    """
    return tf.tensordot(images, matrix, axes=1)


def rgb_to_hed(images: tf.Tensor) -> tf.Tensor:
    """RGB in [0, 1] -> haematoxylin, eosin, DAB optical densities (scikit-image scaling,
    without its clipping at 0 so that `hed_to_rgb` inverts it exactly)."""
    hed_from_rgb = tf.linalg.inv(tf.constant(RGB_FROM_HED, tf.float32))
    log_rgb = tf.math.log(tf.maximum(images, 1e-6)) / _LOG_ADJUST
    return _mix_channels(log_rgb, hed_from_rgb)


def hed_to_rgb(stains: tf.Tensor) -> tf.Tensor:
    """Inverse of `rgb_to_hed`, clipped to [0, 1]."""
    log_rgb = _mix_channels(stains, tf.constant(RGB_FROM_HED, tf.float32)) * _LOG_ADJUST
    return tf.clip_by_value(tf.exp(log_rgb), 0.0, 1.0)


def scale_stains(images: tf.Tensor, scale: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """`hed_to_rgb(rgb_to_hed(images) * scale + shift)` with per-image `(batch, 3)` factors,
    folded into one per-image 3x3 map in log-RGB space:
    `exp(log(x) @ (H diag(scale) R) + L * shift @ R)`, H = inv(R) (R = RGB_FROM_HED,
    L = log(1e-6)): one batched matmul instead of two colour-space conversions."""
    rgb_from_hed = tf.constant(RGB_FROM_HED, tf.float32)
    hed_from_rgb = tf.linalg.inv(rgb_from_hed)
    mixing = _mix_channels(hed_from_rgb[None, :, :] * scale[:, None, :], rgb_from_hed)  # (batch, 3, 3)
    offset = _LOG_ADJUST * tf.matmul(shift, rgb_from_hed)  # (batch, 3)
    shape = tf.shape(images)
    log_rgb = tf.reshape(tf.math.log(tf.maximum(images, 1e-6)), [shape[0], -1, 3])
    # A batched matmul with equal batch dimensions (checked against NumPy in the tests;
    # only the broadcasting form in `_mix_channels` misbehaves under oneDNN).
    mixed = tf.matmul(log_rgb, mixing) + offset[:, None, :]
    return tf.reshape(tf.clip_by_value(tf.exp(mixed), 0.0, 1.0), shape)


# Stain normalisation: every image's haematoxylin and eosin amounts are scaled so that the
# 95th percentile of each stain's optical density over its tissue pixels matches a fixed
# reference, which removes most of the slide-to-slide (laboratory, staining-time)
# difference in how dark the same tissue looks.
STAIN_PERCENTILE = 0.95  # the quantile of each stain's tissue densities that is matched
# Reference H and E densities at that quantile (`rgb_to_hed` units): the median over the
# 18 non-test patients of ../shared/data/idc (their per-patient values span 0.049-0.109
# for H and 0.027-0.055 for E).
STAIN_REFERENCE = (0.0656, 0.0366)
TISSUE_DENSITY = 0.02  # a pixel whose H + E density exceeds this is tissue, not glass
MIN_STAIN_TISSUE_FRACTION = 0.01  # fewer tissue pixels than this (glass only): left unchanged
STAIN_SCALE_LIMITS = (1.0 / 3.0, 3.0)  # the largest darkening / lightening applied


def stain_quantiles(images: tf.Tensor) -> tf.Tensor:
    """Per-image `STAIN_PERCENTILE` quantile of the H and E densities of tissue pixels.

    Args:
      images: float tensor `(n, h, w, 3)` in [0, 1].

    Returns:
      `(quantiles, tissue_fraction)`: float32 `(n, 2)` H and E densities (nearest rank;
      0 for an image without tissue) and float32 `(n,)` share of tissue pixels.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    shape = tf.shape(images)
    stains = tf.reshape(rgb_to_hed(images)[..., :2], [shape[0], -1, 2])  # (n, pixels, 2)
    tissue = tf.reduce_sum(stains, axis=-1) > TISSUE_DENSITY
    count = tf.reduce_sum(tf.cast(tissue, tf.int32), axis=1)  # (n,)
    # Glass pixels sort first (-inf), so the tissue values are the last `count` ones.
    ordered = tf.sort(tf.where(tissue[..., None], stains, -float("inf")), axis=1)
    pixels = tf.shape(stains)[1]
    rank = pixels - count + tf.cast(tf.floor(STAIN_PERCENTILE * tf.cast(tf.maximum(count - 1, 0), tf.float32)),
                                    tf.int32)
    quantiles = tf.gather(ordered, tf.minimum(rank, pixels - 1), axis=1, batch_dims=1)  # (n, 2)
    quantiles = tf.where(count[:, None] > 0, quantiles, 0.0)
    return quantiles, tf.cast(count, tf.float32) / tf.cast(tf.maximum(pixels, 1), tf.float32)


def normalize_stain(images: tf.Tensor) -> tf.Tensor:
    """Scales each image's H and E amounts to the reference stain intensity.

    A pale slide is, to a first approximation, the same tissue with less stain (see
    `augment.random_stain_amount`); dividing each stain's optical density by its upper
    quantile over the image's tissue, times `STAIN_REFERENCE`, makes pale and dark slides
    look alike. Per image, so serving needs nothing but the image. DAB is left alone;
    an image that is nearly all glass is returned unchanged.

    Args:
      images: float tensor `(n, h, w, 3)` in [0, 1].

    Returns:
      float32 tensor of the same shape in [0, 1].
    """
    images = tf.convert_to_tensor(images, tf.float32)
    quantiles, tissue_fraction = stain_quantiles(images)
    low, high = STAIN_SCALE_LIMITS
    scale = tf.clip_by_value(tf.constant(STAIN_REFERENCE) / tf.maximum(quantiles, 1e-6), low, high)
    scale = tf.where((tissue_fraction >= MIN_STAIN_TISSUE_FRACTION)[:, None] & (quantiles > 0), scale, 1.0)
    factors = tf.concat([scale, tf.ones_like(scale[:, :1])], axis=-1)  # DAB unchanged
    return scale_stains(images, factors, tf.zeros_like(factors))
