"""Tests of the training-time augmentation."""

from __future__ import annotations

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np
import pytest
import tensorflow as tf

from histopath.models import augment, image_ops, config as model_config
import synthetic_images


# Every colour augmentation off (the defaults turn the stain-amount and brightness/contrast
# jitter on).
NO_COLOUR = dict(color_jitter=0.0, stain_scale=0.0, stain_shift=0.0, brightness=0.0, contrast=0.0)


@pytest.fixture(scope="module")
def batch():
    return synthetic_images.image_dataset(6, 32, seed=0)[0]


def test_hed_round_trip_is_exact(batch):
    np.testing.assert_allclose(image_ops.hed_to_rgb(image_ops.rgb_to_hed(batch)).numpy(), batch, atol=1e-5)


@pytest.mark.parametrize("color_space", ["hed", "hsv"])
def test_augment_batch_shape_range_and_determinism(batch, color_space):
    config = model_config.AugmentConfig(color_space=color_space, color_jitter=0.1)
    seed = tf.constant([3, 4], tf.int64)
    first = augment.augment_batch(batch, seed, config).numpy()
    assert first.shape == batch.shape and first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() <= 1.0
    np.testing.assert_array_equal(first, augment.augment_batch(batch, seed, config).numpy())
    assert not np.allclose(first, augment.augment_batch(batch, tf.constant([3, 5], tf.int64), config).numpy())
    assert not np.allclose(first, batch)


def test_geometric_only_augmentation_permutes_pixels(batch):
    config = model_config.AugmentConfig(crop_fraction=1.0, **NO_COLOUR)
    out = augment.augment_batch(batch, tf.constant([1, 2], tf.int64), config).numpy()
    for original, augmented in zip(batch, out):
        np.testing.assert_allclose(np.sort(original.ravel()), np.sort(augmented.ravel()), atol=1e-6)
    assert not np.allclose(out, batch)


def test_disabled_augmentation_returns_the_dataset_unchanged(batch):
    dataset = tf.data.Dataset.from_tensor_slices((batch, np.zeros(6))).batch(3)
    config = model_config.AugmentConfig(flips=False, rotations=False, crop_fraction=1.0, **NO_COLOUR)
    assert augment.augment_dataset(dataset, config, seed=0) is dataset


def test_dataset_augmentation_is_seeded_and_differs_between_epochs(batch):
    dataset = tf.data.Dataset.from_tensor_slices((batch, np.arange(6))).batch(3)
    config = model_config.AugmentConfig()
    augmented = augment.augment_dataset(dataset, config, seed=7)
    epoch_1 = [images.numpy() for images, _ in augmented]
    epoch_2 = [images.numpy() for images, _ in augmented]
    again = [images.numpy() for images, _ in augment.augment_dataset(dataset, config, seed=7)]
    np.testing.assert_array_equal(epoch_1[0], again[0])
    assert not np.allclose(epoch_1[0], epoch_2[0])
    labels = [labels.numpy().tolist() for _, labels in augmented]
    assert labels == [[0, 1, 2], [3, 4, 5]]


def test_non_square_images_only_rotate_by_180():
    image = np.random.default_rng(0).random((8, 32, 48, 3)).astype(np.float32)
    config = model_config.AugmentConfig(flips=False, crop_fraction=1.0, **NO_COLOUR)
    out = augment.augment_batch(image, tf.constant([0, 1], tf.int64), config).numpy()
    assert out.shape == image.shape
    for original, augmented in zip(image, out):
        assert np.array_equal(original, augmented) or np.array_equal(original[::-1, ::-1], augmented)


def test_flips_and_rotations_reach_all_eight_symmetries_of_the_square():
    image = np.arange(4 * 4 * 3, dtype=np.float32).reshape(1, 4, 4, 3) / 48.0
    symmetries = []
    for turns in range(4):
        rotated = np.rot90(image[0], turns)
        symmetries += [rotated, rotated[:, ::-1]]
    batch = tf.constant(np.repeat(image, 400, axis=0))
    out = augment.random_flips_rotations(batch, tf.constant([3, 4], tf.int64), flips=True, rotations=True).numpy()
    counts = [sum(np.array_equal(o, s) for o in out) for s in symmetries]
    assert sum(counts) == 400  # every output is one of the 8 symmetries
    assert min(counts) > 25  # each drawn about 400 / 8 = 50 times


def test_stain_jitter_matches_the_two_conversions_in_float64():
    rng = np.random.default_rng(5)
    images = rng.uniform(0.02, 1.0, (70, 24, 24, 3)).astype(np.float32)  # >= 64 images: oneDNN's batched paths
    scale = rng.uniform(0.9, 1.1, (70, 3)).astype(np.float32)
    shift = rng.uniform(-0.1, 0.1, (70, 3)).astype(np.float32)
    rgb_from_hed = np.array(image_ops.RGB_FROM_HED, np.float64)
    log_adjust = np.log(1e-6)
    stains = (np.log(images.astype(np.float64)) / log_adjust) @ np.linalg.inv(rgb_from_hed)
    stains = stains * scale[:, None, None, :] + shift[:, None, None, :]
    expected = np.clip(np.exp((stains @ rgb_from_hed) * log_adjust), 0.0, 1.0)
    jittered = image_ops.scale_stains(tf.constant(images), tf.constant(scale), tf.constant(shift))
    np.testing.assert_allclose(jittered.numpy(), expected, atol=2e-5)


def test_brightness_contrast_matches_numpy_and_stays_in_range(batch):
    seed = tf.constant([5, 6], tf.int64)
    out = augment.random_brightness_contrast(batch, seed, brightness=0.2, contrast=0.4).numpy()
    assert out.shape == batch.shape and out.min() >= 0.0 and out.max() <= 1.0
    # Undo the affine map image by image: every image must be a*x + b of its input (in the
    # unclipped pixels), with a in [0.6, 1.4] and the shift b - (1 - a) * mean in [-0.2, 0.2].
    for original, augmented in zip(batch, out):
        inside = (augmented > 1e-4) & (augmented < 1 - 1e-4)
        a, b = np.polyfit(original[inside], augmented[inside], 1)
        np.testing.assert_allclose(a * original[inside] + b, augmented[inside], atol=1e-4)
        assert 0.6 - 1e-3 <= a <= 1.4 + 1e-3
        assert abs(b - (1 - a) * original.mean()) <= 0.2 + 1e-3
    config = model_config.AugmentConfig(flips=False, rotations=False, crop_fraction=1.0,
                                        **{**NO_COLOUR, "brightness": 0.2, "contrast": 0.4})
    assert config.enabled
    via_batch = augment.augment_batch(batch, seed, config).numpy()
    assert not np.allclose(via_batch, batch)
    with pytest.raises(Exception, match="brightness"):
        model_config.AugmentConfig(brightness=0.9)


def test_stain_amount_scales_haematoxylin_and_eosin_per_image_and_keeps_dab_and_glass():
    rng = np.random.default_rng(7)
    images = rng.uniform(0.3, 0.95, (6, 16, 16, 3)).astype(np.float32)
    images[:, :4] = 1.0  # a strip of white glass
    seed = tf.constant([2, 9], tf.int64)
    out = augment.random_stain_amount(tf.constant(images), seed, scale=0.4, shift=0.0)
    np.testing.assert_array_equal(out.numpy(), augment.random_stain_amount(tf.constant(images), seed, 0.4, 0.0).numpy())
    np.testing.assert_allclose(out.numpy()[:, :4], 1.0, atol=1e-5)  # glass stays white
    before, after = image_ops.rgb_to_hed(images).numpy(), image_ops.rgb_to_hed(out).numpy()
    # Tissue pixels that the final clip to [0, 1] left alone.
    unclipped = np.all((out.numpy() > 1e-4) & (out.numpy() < 1 - 1e-4), axis=-1)
    unclipped[:, :4] = False
    assert unclipped.mean() > 0.5
    np.testing.assert_allclose(after[unclipped][:, 2], before[unclipped][:, 2], atol=2e-6)  # DAB unchanged
    factors = []
    for stain in (0, 1):  # one factor per image and stain, within [0.6, 1.4]
        for index in range(len(images)):
            keep = unclipped[index] & (np.abs(before[index, ..., stain]) > 1e-3)
            ratio = after[index, ..., stain][keep] / before[index, ..., stain][keep]
            np.testing.assert_allclose(ratio, np.median(ratio), rtol=1e-3)
            factors.append(np.median(ratio))
    assert np.all((np.array(factors) >= 0.6 - 1e-4) & (np.array(factors) <= 1.4 + 1e-4))
    assert np.std(factors) > 0.01  # images and stains get different draws
    config = model_config.AugmentConfig(flips=False, rotations=False, crop_fraction=1.0,
                                        **{**NO_COLOUR, "stain_scale": 0.4, "stain_shift": 0.01})
    assert config.enabled
    assert not np.allclose(augment.augment_batch(images, seed, config).numpy(), images)
    with pytest.raises(Exception, match="stain_scale"):
        model_config.AugmentConfig(stain_scale=1.0)
