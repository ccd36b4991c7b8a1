"""Stain normalisation methods pathologists know: Macenko and Reinhard, beside the
project's own H&E optical-density scaling (`image_ops.normalize_stain`).

Pure, vectorised TensorFlow: a batch `(n, h, w, 3)` of float32 RGB in [0, 1] in, the
normalised batch out, every image on its own (no Python loop over images or pixels). The
Transform `preprocessing_fn` calls `normalize(images, method)`, so the Transform graph
embedded in every exported model applies the same method at serving time.

Methods (`METHODS`, the pipeline setting `stain_normalization`):

- `"none"`: the image as decoded.
- `"od_scaling"`: `image_ops.normalize_stain` (the setting `True` of older config files).
- `"macenko"`: Macenko et al. (2009), "A method for normalizing histology slides for
  quantitative analysis": optical density (OD), pixels with any channel's OD below
  `MACENKO_BETA` dropped, the plane of the two largest eigenvectors of the OD covariance,
  the `MACENKO_ALPHA` and 100 - `MACENKO_ALPHA` percentile angles in that plane as the two
  stain vectors (haematoxylin the one with the larger red OD), concentrations by least
  squares, each stain's 99th-percentile concentration scaled to the reference, rebuilt with
  the reference stain matrix.
- `"reinhard"`: Reinhard et al. (2001), "Color transfer between images": each image's
  mean and standard deviation per channel of the l-alpha-beta colour space (Ruderman's
  decorrelated Lab, as Reinhard used it; HistomicsTK's `rgb_to_lab`) matched to a
  reference, statistics over tissue pixels only, glass pixels left unchanged.

References: fixed, the standard published values (below), never fitted on the data, so
serving needs nothing but the image and a run does not depend on its training split.
`macenko_reference` and `reinhard_reference` compute the same quantities from a set of
images (e.g. a chosen reference tile) for whoever wants a local reference; the pipeline
does not use them.

Degenerate images: an image with too little tissue (all glass, blank) is returned
unchanged by both methods; a single-colour image (no second stain direction) is unmixed
with the reference stain matrix instead of its own; no division can produce NaN.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import tensorflow as tf

from histopath.models import image_ops, stain_methods

METHODS = stain_methods.METHODS
method_name = stain_methods.method_name

# ---- Macenko ------------------------------------------------------------------------------
# The usual implementation constants (Macenko's paper; torchstain, StainTools): light
# intensity 240 of 255, OD threshold 0.15, 1st/99th percentile angles.
MACENKO_LIGHT = 240.0
MACENKO_BETA = 0.15
MACENKO_ALPHA = 1.0  # percent
MACENKO_MAX_PERCENTILE = 99.0
# The standard reference (natural-log OD with light 240): H and E unit vectors as the
# columns (R, G, B rows), and the 99th-percentile concentrations they are scaled to.
MACENKO_REFERENCE_STAINS = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
MACENKO_REFERENCE_MAX_CONCENTRATIONS = (1.9705, 1.0308)
# Fewer tissue pixels than this share of the image (or than 8): returned unchanged.
MIN_TISSUE_FRACTION = 0.01
MIN_TISSUE_PIXELS = 8
# Stain vectors closer than this angle (radians) are one colour: the reference matrix unmixes.
MIN_STAIN_ANGLE = 0.01

# ---- Reinhard -----------------------------------------------------------------------------
# RGB (0..255) -> LMS -> natural log -> l-alpha-beta (HistomicsTK's `rgb_to_lab`).
RGB_TO_LMS = ((0.3811, 0.5783, 0.0402), (0.1967, 0.7244, 0.0782), (0.0241, 0.1288, 0.8444))
# The H&E colour standard of HistomicsTK (the TCGA-A2-A3XS-DX1 region, Amgad et al. 2019).
REINHARD_REFERENCE_MEANS = (8.74108109, -0.12440419, 0.0444982)
REINHARD_REFERENCE_STDS = (0.6135447, 0.10989545, 0.0286032)
REINHARD_MAX_SCALE = 10.0  # the largest stretch of a channel's spread (near-flat images)


def normalize(images: tf.Tensor, method: Any) -> tf.Tensor:
    """Applies stain normalisation `method` (see `method_name`) to a batch.

    Args:
      images: float tensor `(n, h, w, 3)` in [0, 1].
      method: a `METHODS` name or the older boolean form.

    Returns:
      float32 tensor of the same shape in [0, 1].
    """
    name = method_name(method)
    images = tf.convert_to_tensor(images, tf.float32)
    if name == "od_scaling":
        return image_ops.normalize_stain(images)
    if name == "macenko":
        return macenko(images)
    if name == "reinhard":
        return reinhard(images)
    return images


def _flat(images: tf.Tensor) -> tf.Tensor:
    shape = tf.shape(images)
    return tf.reshape(images, [shape[0], -1, 3])


def _enough_tissue(tissue: tf.Tensor) -> tf.Tensor:
    """`(n, pixels)` bool -> `(n,)`: at least `MIN_TISSUE_FRACTION` and `MIN_TISSUE_PIXELS`."""
    count = tf.reduce_sum(tf.cast(tissue, tf.float32), axis=1)
    pixels = tf.cast(tf.shape(tissue)[1], tf.float32)
    return (count >= MIN_TISSUE_FRACTION * pixels) & (count >= MIN_TISSUE_PIXELS)


def _masked_percentile(values: tf.Tensor, mask: tf.Tensor, percent: float) -> tf.Tensor:
    """Nearest-rank percentile of `values (n, pixels, k)` over the pixels where `mask (n,
    pixels)` holds, per image and column; 0 where no pixel does."""
    count = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)  # (n,)
    ordered = tf.sort(tf.where(mask[..., None], values, float("inf")), axis=1)  # masked first
    rank = tf.cast(tf.floor(percent / 100.0 * tf.cast(tf.maximum(count - 1, 0), tf.float32)), tf.int32)
    picked = tf.gather(ordered, rank, axis=1, batch_dims=1)  # (n, k)
    return tf.where(count[:, None] > 0, picked, 0.0)


def optical_density(images: tf.Tensor) -> tf.Tensor:
    """Macenko's OD, `-ln((255 x + 1) / 240)`, of RGB `x` in [0, 1]."""
    return -tf.math.log((images * 255.0 + 1.0) / MACENKO_LIGHT)


def _from_optical_density(density: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value((MACENKO_LIGHT * tf.exp(-density) - 1.0) / 255.0, 0.0, 1.0)


def macenko_stains(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Each image's Macenko stain matrix.

    Args:
      images: float tensor `(n, h, w, 3)` in [0, 1].

    Returns:
      `(stains, usable)`: float32 `(n, 3, 2)` unit H and E OD vectors as columns, and bool
      `(n,)`, False where the image has too little tissue or only one stain direction
      (those rows hold the reference matrix).
    """
    density = optical_density(_flat(tf.convert_to_tensor(images, tf.float32)))  # (n, p, 3)
    tissue = tf.reduce_all(density >= MACENKO_BETA, axis=-1)  # (n, p)
    weight = tf.cast(tissue, tf.float32)[..., None]
    count = tf.reduce_sum(weight, axis=1)  # (n, 1)
    mean = tf.reduce_sum(density * weight, axis=1, keepdims=True) / tf.maximum(count[:, None], 1.0)
    centred = (density - mean) * weight
    covariance = tf.matmul(centred, centred, transpose_a=True) / tf.maximum(count[:, None] - 1.0, 1.0)
    _, vectors = tf.linalg.eigh(covariance)  # eigenvalues ascending
    plane = vectors[:, :, 1:3]  # (n, 3, 2): the two largest
    # Eigenvectors have no sign: point both into the positive octant's side (OD >= 0).
    plane = plane * tf.where(tf.reduce_sum(plane, axis=1, keepdims=True) < 0, -1.0, 1.0)
    projected = tf.matmul(density, plane)  # (n, p, 2)
    angle = tf.math.atan2(projected[..., 1], projected[..., 0])[..., None]
    low = _masked_percentile(angle, tissue, MACENKO_ALPHA)[:, 0]
    high = _masked_percentile(angle, tissue, 100.0 - MACENKO_ALPHA)[:, 0]

    def direction(phi: tf.Tensor) -> tf.Tensor:
        return tf.matmul(plane, tf.stack([tf.cos(phi), tf.sin(phi)], axis=-1)[..., None])[..., 0]  # (n, 3)

    first, second = direction(low), direction(high)
    haematoxylin_first = first[:, 0] > second[:, 0]  # haematoxylin absorbs more red
    h = tf.where(haematoxylin_first[:, None], first, second)
    e = tf.where(haematoxylin_first[:, None], second, first)
    stains = tf.stack([h, e], axis=-1)
    stains = stains / tf.maximum(tf.norm(stains, axis=1, keepdims=True), 1e-6)
    usable = _enough_tissue(tissue) & (high - low >= MIN_STAIN_ANGLE)
    reference = tf.broadcast_to(tf.constant(MACENKO_REFERENCE_STAINS, tf.float32), tf.shape(stains))
    return tf.where(usable[:, None, None], stains, reference), usable


def _concentrations(density: tf.Tensor, stains: tf.Tensor) -> tf.Tensor:
    """Least-squares H and E amounts `(n, p, 2)` of OD `(n, p, 3)` for stains `(n, 3, 2)`."""
    gram = tf.matmul(stains, stains, transpose_a=True) + 1e-6 * tf.eye(2)
    unmix = tf.matmul(tf.linalg.inv(gram), stains, transpose_b=True)  # (n, 2, 3)
    return tf.matmul(density, unmix, transpose_b=True)


def macenko(images: tf.Tensor, reference_stains: Sequence[Sequence[float]] = MACENKO_REFERENCE_STAINS,
            reference_max: Sequence[float] = MACENKO_REFERENCE_MAX_CONCENTRATIONS) -> tf.Tensor:
    """Macenko stain normalisation of a batch (module docstring).

    Args:
      images: float tensor `(n, h, w, 3)` in [0, 1].
      reference_stains: target H and E OD unit vectors as the columns of a 3 x 2 matrix.
      reference_max: target 99th-percentile H and E concentrations.

    Returns:
      float32 tensor of the same shape in [0, 1]; images with too little tissue unchanged.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    density = optical_density(_flat(images))
    stains, _ = macenko_stains(images)
    amounts = _concentrations(density, stains)  # (n, p, 2)
    everywhere = tf.ones(tf.shape(amounts)[:2], tf.bool)
    top = _masked_percentile(amounts, everywhere, MACENKO_MAX_PERCENTILE)  # (n, 2)
    scale = tf.where(top > 1e-3, tf.constant(reference_max, tf.float32) / tf.maximum(top, 1e-3), 1.0)
    target = tf.broadcast_to(tf.constant(reference_stains, tf.float32), tf.shape(stains))
    rebuilt = tf.matmul(amounts * scale[:, None, :], target, transpose_b=True)  # (n, p, 3)
    normalized = tf.reshape(_from_optical_density(rebuilt), tf.shape(images))
    tissue = tf.reduce_all(density >= MACENKO_BETA, axis=-1)
    return tf.where(_enough_tissue(tissue)[:, None, None, None], normalized, images)


def rgb_to_lab(images: tf.Tensor) -> tf.Tensor:
    """RGB in [0, 1] -> Reinhard's l-alpha-beta (HistomicsTK's scaling: RGB 0..255, natural log)."""
    rgb_to_lms, lms_to_lab = _lab_matrices()
    lms = _mix(images * 255.0, rgb_to_lms)
    return _mix(tf.math.log(tf.maximum(lms, 1e-6)), lms_to_lab)


def lab_to_rgb(lab: tf.Tensor) -> tf.Tensor:
    """Inverse of `rgb_to_lab`, clipped to [0, 1]."""
    rgb_to_lms, lms_to_lab = _lab_matrices()
    lms = tf.exp(_mix(lab, tf.linalg.inv(lms_to_lab)))
    return tf.clip_by_value(_mix(lms, tf.linalg.inv(rgb_to_lms)) / 255.0, 0.0, 1.0)


_LMS_TO_LAB = ((1.0 / math.sqrt(3.0), 1.0 / math.sqrt(3.0), 1.0 / math.sqrt(3.0)),
               (1.0 / math.sqrt(6.0), 1.0 / math.sqrt(6.0), -2.0 / math.sqrt(6.0)),
               (1.0 / math.sqrt(2.0), -1.0 / math.sqrt(2.0), 0.0))


def _lab_matrices() -> tuple[tf.Tensor, tf.Tensor]:
    """RGB -> LMS and log-LMS -> l-alpha-beta, as constants of the graph being built."""
    return tf.constant(RGB_TO_LMS, tf.float32), tf.constant(_LMS_TO_LAB, tf.float32)


def _mix(pixels: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
    """`matrix @ pixel` for every pixel of `(..., 3)`: a tensordot over the last axis (not a
    broadcasting einsum or matmul, see `image_ops._mix_channels`)."""
    return tf.tensordot(pixels, tf.transpose(matrix), axes=1)


def reinhard_tissue(images: tf.Tensor) -> tf.Tensor:
    """The pixels Reinhard's statistics are taken over (and changed): bool `(n, h*w)`, the
    tissue of Macenko's OD threshold (any stained pixel; glass is not)."""
    return tf.reduce_all(optical_density(_flat(images)) >= MACENKO_BETA, axis=-1)


def lab_statistics(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-image mean and standard deviation `(n, 3)` of l-alpha-beta over tissue pixels."""
    images = tf.convert_to_tensor(images, tf.float32)
    lab = _flat(rgb_to_lab(images))
    weight = tf.cast(reinhard_tissue(images), tf.float32)[..., None]
    count = tf.maximum(tf.reduce_sum(weight, axis=1), 1.0)
    mean = tf.reduce_sum(lab * weight, axis=1) / count
    variance = tf.reduce_sum(tf.square(lab - mean[:, None, :]) * weight, axis=1) / count
    return mean, tf.sqrt(variance + 1e-12)


def reinhard(images: tf.Tensor, reference_means: Sequence[float] = REINHARD_REFERENCE_MEANS,
             reference_stds: Sequence[float] = REINHARD_REFERENCE_STDS) -> tf.Tensor:
    """Reinhard colour transfer of a batch to a reference (module docstring).

    Args:
      images: float tensor `(n, h, w, 3)` in [0, 1].
      reference_means: target l-alpha-beta means.
      reference_stds: target l-alpha-beta standard deviations.

    Returns:
      float32 tensor of the same shape in [0, 1]; glass pixels, and images with too little
      tissue, unchanged.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    mean, std = lab_statistics(images)
    target_std = tf.constant(reference_stds, tf.float32)
    scale = tf.minimum(target_std / tf.maximum(std, 1e-6), REINHARD_MAX_SCALE)  # (n, 3)
    lab = _flat(rgb_to_lab(images))
    moved = (lab - mean[:, None, :]) * scale[:, None, :] + tf.constant(reference_means, tf.float32)
    normalized = _flat(lab_to_rgb(moved))
    tissue = reinhard_tissue(images)
    change = tissue & _enough_tissue(tissue)[:, None]
    return tf.reshape(tf.where(change[..., None], normalized, _flat(images)), tf.shape(images))


def macenko_reference(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A Macenko reference from a set of images: the stain matrix of all their pixels taken
    as one image, and its 99th-percentile concentrations; `((3, 2), (2,))`."""
    pooled = tf.reshape(tf.convert_to_tensor(images, tf.float32), [1, -1, 1, 3])
    stains, _ = macenko_stains(pooled)
    amounts = _concentrations(optical_density(_flat(pooled)), stains)
    top = _masked_percentile(amounts, tf.ones(tf.shape(amounts)[:2], tf.bool), MACENKO_MAX_PERCENTILE)
    return stains[0], top[0]


def reinhard_reference(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A Reinhard reference from a set of images: l-alpha-beta means and standard
    deviations `((3,), (3,))` over the tissue pixels of all of them."""
    mean, std = lab_statistics(tf.reshape(tf.convert_to_tensor(images, tf.float32), [1, -1, 1, 3]))
    return mean[0], std[0]
