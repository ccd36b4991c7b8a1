"""Seeded random augmentation of training batches (never used at evaluation/serving).

Operates on batches of float32 images `(batch, H, W, 3)` in [0, 1]; every image of a
batch gets its own random draw. Randomness comes from a `tf.random.Generator` seeded by
`TrainingConfig.seed`, turned into per-batch seeds for stateless ops, so a run is
reproducible and each epoch sees new augmentations.
"""

from __future__ import annotations

import tensorflow as tf

from histopath.models import image_ops
from histopath.models.config import AugmentConfig

MIN_CROP_PIXELS = 16


def _uniform(seed: tf.Tensor, shape, low: float, high: float) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def _per_image(mask: tf.Tensor, yes: tf.Tensor, no: tf.Tensor) -> tf.Tensor:
    return tf.where(tf.reshape(mask, [-1, 1, 1, 1]), yes, no)


def random_crop_resize(images: tf.Tensor, seed: tf.Tensor, fraction: float) -> tf.Tensor:
    """Crops a random `fraction` of each side of every image and resizes back."""
    batch = tf.shape(images)[0]
    size = tf.shape(images)[1:3]
    y0 = _uniform(seed, [batch], 0.0, 1.0 - fraction)
    x0 = _uniform(tf.stack([seed[0], seed[1] + 1]), [batch], 0.0, 1.0 - fraction)
    boxes = tf.stack([y0, x0, y0 + fraction, x0 + fraction], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(batch), size, method="bilinear")


def _square_symmetries(size: int) -> tf.Tensor:
    """(8, size*size) int32: for each of `image_ops.square_symmetry`'s symmetries, the
    source pixel of every output pixel, row-major."""
    pixels = tf.reshape(tf.range(size * size, dtype=tf.int32), [1, size, size, 1])
    return tf.concat([tf.reshape(image_ops.square_symmetry(pixels, index), [1, -1])
                      for index in range(image_ops.SQUARE_SYMMETRIES)], axis=0)


def random_flips_rotations(images: tf.Tensor, seed: tf.Tensor, flips: bool, rotations: bool) -> tf.Tensor:
    """Random horizontal/vertical flips and 90-degree rotations (180 if not square)."""
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    height, width = images.shape[1], images.shape[2]
    if flips and rotations and height is not None and height == width:
        # Flips and quarter turns together: one of the 8 symmetries of the square per
        # image, uniformly, applied as a single gather of pixels (no per-image selects).
        choice = tf.random.stateless_uniform([batch], seed=seeds[2], minval=0, maxval=8, dtype=tf.int32)
        channels = tf.shape(images)[3]
        pixels = tf.gather(_square_symmetries(int(height)), choice)  # (batch, H*W)
        flat = tf.reshape(images, [batch, height * width, channels])
        return tf.reshape(tf.gather(flat, pixels, batch_dims=1), [batch, height, width, channels])
    if flips:
        images = _per_image(_uniform(seeds[0], [batch], 0, 1) < 0.5, tf.reverse(images, [2]), images)
        images = _per_image(_uniform(seeds[1], [batch], 0, 1) < 0.5, tf.reverse(images, [1]), images)
    if rotations:
        square = height is not None and height == width
        turns = tf.random.stateless_uniform([batch], seed=seeds[2], minval=0, maxval=4, dtype=tf.int32)
        if square:
            rotated = images
            for quarter in range(1, 4):
                rotated = _per_image(turns == quarter, tf.image.rot90(images, quarter), rotated)
            images = rotated
        else:
            images = _per_image(turns % 2 == 1, tf.reverse(images, [1, 2]), images)
    return images


def random_stain_jitter(images: tf.Tensor, seed: tf.Tensor, strength: float, color_space: str) -> tf.Tensor:
    """Random colour/stain variation.

    Args:
      images: float32 `(batch, H, W, 3)` in [0, 1].
      seed: int `(2,)` stateless seed.
      strength: jitter strength `s` (see `AugmentConfig.color_jitter`).
      color_space: "hed": per-stain optical density `* U(1-s, 1+s) + U(-s, s)`
        (Tellez et al. 2018); "hsv": hue `+ U(-s/2, s/2)`, saturation and value
        `* U(1-2s, 1+2s)`.
    """
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if color_space == "hed":
        scale = _uniform(seeds[0], [batch, 1, 1, 3], 1.0 - strength, 1.0 + strength)
        shift = _uniform(seeds[1], [batch, 1, 1, 3], -strength, strength)
        return image_ops.scale_stains(images, scale[:, 0, 0, :], shift[:, 0, 0, :])
    hsv = tf.image.rgb_to_hsv(images)
    hue = tf.math.floormod(hsv[..., 0:1] + _uniform(seeds[0], [batch, 1, 1, 1], -strength / 2, strength / 2), 1.0)
    sat_val = hsv[..., 1:3] * _uniform(seeds[1], [batch, 1, 1, 2], 1.0 - 2 * strength, 1.0 + 2 * strength)
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.concat([hue, tf.clip_by_value(sat_val, 0.0, 1.0)], -1)), 0.0, 1.0)


def random_stain_amount(images: tf.Tensor, seed: tf.Tensor, scale: float, shift: float) -> tf.Tensor:
    """Random amounts of haematoxylin and eosin, as between laboratories and slides.

    Each image's haematoxylin and eosin optical densities are multiplied by
    `U(1-scale, 1+scale)` (one factor per stain) and shifted by `U(-shift, shift)`; the
    DAB channel is left alone, so glass stays white and no colour outside H&E appears.
    A pale slide is, to a first approximation, the same tissue with less stain: about
    0.6x the optical density of a dark one.

    Args:
      images: float32 `(batch, H, W, 3)` in [0, 1].
      seed: int `(2,)` stateless seed.
      scale: largest relative change of a stain's optical density.
      shift: largest additive change, in `rgb_to_hed` units (typical H&E tissue pixels
        have optical densities of 0.02-0.1 there, so keep this small, about 0.01).
    """
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    h_and_e = tf.constant([1.0, 1.0, 0.0])  # which stains change: not DAB
    factors = 1.0 + _uniform(seeds[0], [batch, 3], -scale, scale) * h_and_e
    offsets = _uniform(seeds[1], [batch, 3], -shift, shift) * h_and_e
    return image_ops.scale_stains(images, factors, offsets)


def random_brightness_contrast(images: tf.Tensor, seed: tf.Tensor, brightness: float,
                               contrast: float) -> tf.Tensor:
    """Per-image `(x - mean) * U(1-c, 1+c) + mean + U(-b, b)`, clipped to [0, 1].

    Args:
      images: float32 `(batch, H, W, 3)` in [0, 1].
      seed: int `(2,)` stateless seed.
      brightness: `b`, the largest shift of every pixel value.
      contrast: `c`, the largest relative change of the deviations from the image mean.
    """
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    factor = _uniform(seeds[0], [batch, 1, 1, 1], 1.0 - contrast, 1.0 + contrast)
    shift = _uniform(seeds[1], [batch, 1, 1, 1], -brightness, brightness)
    return tf.clip_by_value((images - mean) * factor + mean + shift, 0.0, 1.0)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """Applies the configured random augmentations to one batch.

    Args:
      images: float32 `(batch, H, W, 3)` in [0, 1].
      seed: int `(2,)` stateless seed for this batch.
      config: which augmentations, and how strong.

    Returns:
      float32 tensor of the same shape, in [0, 1].
    """
    images = tf.convert_to_tensor(images, tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5)
    static_shape = images.shape
    if config.crop_fraction < 1.0:
        known_sides = [side for side in static_shape[1:3] if side is not None]
        if not known_sides or min(known_sides) * config.crop_fraction >= MIN_CROP_PIXELS:
            images = random_crop_resize(images, seeds[0], config.crop_fraction)
    if config.flips or config.rotations:
        images = random_flips_rotations(images, seeds[1], config.flips, config.rotations)
    if config.color_jitter > 0:
        images = random_stain_jitter(images, seeds[2], config.color_jitter, config.color_space)
    if config.stain_scale > 0 or config.stain_shift > 0:
        images = random_stain_amount(images, seeds[4], config.stain_scale, config.stain_shift)
    if config.brightness > 0 or config.contrast > 0:
        images = random_brightness_contrast(images, seeds[3], config.brightness, config.contrast)
    images = tf.clip_by_value(images, 0.0, 1.0)
    images.set_shape(static_shape)
    return images


def augment_dataset(dataset: tf.data.Dataset, config: AugmentConfig, seed: int) -> tf.data.Dataset:
    """Maps `augment_batch` over a batched `(images, labels, ...)` dataset.

    Args:
      dataset: yields tuples whose first element is a float32 image batch.
      config: augmentation options; a disabled config returns `dataset` unchanged.
      seed: seed of the augmentation stream.

    Returns:
      The augmented dataset (same element structure).
    """
    if not config.enabled:
        return dataset
    generator = tf.random.Generator.from_seed(seed)

    def draw_seed(images, *rest):
        # Sequential (one call at a time) so the seed stream is reproducible.
        return (images, generator.make_seeds(1)[:, 0], *rest)

    def apply(images, batch_seed, *rest):
        return (augment_batch(images, batch_seed, config), *rest)

    dataset = dataset.map(draw_seed)
    return dataset.map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
