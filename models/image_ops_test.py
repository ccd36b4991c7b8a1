"""Tests of the shared image operations: symmetries of the square, stain normalisation."""

from __future__ import annotations

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np
import pytest
import tensorflow as tf

from histopath.models import image_ops, preprocessing
import synthetic_images


def _stains(images: np.ndarray) -> np.ndarray:
    """`rgb_to_hed` in float64 NumPy (H, E, DAB densities)."""
    log_rgb = np.log(np.maximum(images.astype(np.float64), 1e-6)) / np.log(1e-6)
    return log_rgb @ np.linalg.inv(np.array(image_ops.RGB_FROM_HED, np.float64))


def test_square_symmetries_are_the_eight_turns_and_mirrors_and_invert():
    grid = tf.reshape(tf.range(9, dtype=tf.float32), [1, 3, 3, 1])
    moved = [image_ops.square_symmetry(grid, index) for index in range(image_ops.SQUARE_SYMMETRIES)]
    assert len({tuple(m.numpy().ravel()) for m in moved}) == 8
    np.testing.assert_array_equal(moved[0], grid)
    as_rows = lambda m: m.numpy()[0, :, :, 0].tolist()  # noqa: E731
    assert as_rows(moved[1]) == [[2, 1, 0], [5, 4, 3], [8, 7, 6]]  # mirrored left-right
    assert as_rows(moved[2]) == [[2, 5, 8], [1, 4, 7], [0, 3, 6]]  # a counter-clockwise quarter turn
    assert as_rows(moved[3]) == [[8, 5, 2], [7, 4, 1], [6, 3, 0]]  # the turn, then the mirror
    for index, m in enumerate(moved):
        np.testing.assert_array_equal(image_ops.invert_square_symmetry(m, index), grid)


@pytest.fixture(scope="module")
def tissue():
    """Four 40 px H&E images made from stain densities: every pixel is tissue, even at 0.6x."""
    rng = np.random.default_rng(3)
    stains = np.stack([rng.uniform(0.03, 0.1, (4, 40, 40)), rng.uniform(0.02, 0.05, (4, 40, 40)),
                       np.zeros((4, 40, 40))], axis=-1) * rng.uniform(0.7, 1.3, (4, 1, 1, 3))
    return image_ops.hed_to_rgb(tf.constant(stains, tf.float32)).numpy()


def test_stain_quantiles_are_the_nearest_rank_quantile_of_tissue_pixels(tissue):
    images = np.concatenate([tissue, synthetic_images.image_dataset(2, 40, seed=1)[0]])
    images[0, :10] = 1.0  # a strip of glass: not counted
    quantiles, fraction = image_ops.stain_quantiles(tf.constant(images))
    for index, image in enumerate(images):
        stains = _stains(image).reshape(-1, 3)[:, :2]
        inside = stains.sum(axis=1) > image_ops.TISSUE_DENSITY
        ordered = np.sort(stains[inside], axis=0)
        rank = int(np.floor(image_ops.STAIN_PERCENTILE * (inside.sum() - 1)))
        np.testing.assert_allclose(quantiles.numpy()[index], ordered[rank], rtol=1e-4, atol=1e-6)
        assert fraction.numpy()[index] == pytest.approx(inside.mean())
    assert fraction.numpy()[0] == pytest.approx(0.75)


def test_pale_and_dark_copies_of_a_slide_normalise_to_the_same_image(tissue):
    images = tf.constant(tissue)
    pale = image_ops.scale_stains(images, tf.constant([[0.6, 0.6, 1.0]] * 4), tf.zeros([4, 3]))
    dark = image_ops.scale_stains(images, tf.constant([[1.4, 1.3, 1.0]] * 4), tf.zeros([4, 3]))
    normalized_pale = image_ops.normalize_stain(pale).numpy()
    normalized_dark = image_ops.normalize_stain(dark).numpy()
    assert np.abs(pale.numpy() - dark.numpy()).mean() > 0.05  # they start far apart
    assert np.abs(normalized_pale - normalized_dark).mean() < 0.01  # and end alike
    quantiles, _ = image_ops.stain_quantiles(tf.constant(normalized_pale))
    np.testing.assert_allclose(quantiles.numpy(), np.tile(image_ops.STAIN_REFERENCE, (4, 1)), rtol=0.1)
    assert normalized_pale.dtype == np.float32 and normalized_pale.shape == tissue.shape
    assert normalized_pale.min() >= 0.0 and normalized_pale.max() <= 1.0


def test_glass_is_left_alone_and_the_scale_is_bounded():
    glass = np.full((2, 16, 16, 3), 0.96, np.float32)
    np.testing.assert_allclose(image_ops.normalize_stain(tf.constant(glass)).numpy(), glass, atol=1e-5)
    faint = np.full((1, 16, 16, 3), 0.9, np.float32)
    faint[..., 1] = 0.8  # a faint pink wash: tissue, but 10x below the reference density
    before = _stains(faint).reshape(-1, 3)
    after = _stains(image_ops.normalize_stain(tf.constant(faint)).numpy()).reshape(-1, 3)
    ratio = after[:, :2].max(axis=0) / before[:, :2].max(axis=0)
    assert np.all(ratio <= image_ops.STAIN_SCALE_LIMITS[1] + 1e-3)


@pytest.mark.parametrize("normalize", [0, 1])
def test_transform_applies_stain_normalisation_only_when_configured(tissue, normalize):
    encoded = tf.stack([tf.io.encode_png(tf.cast(np.round(image * 255), tf.uint8)) for image in tissue])
    outputs = preprocessing.preprocessing_fn({"image": encoded},
                                             {"image_size": 40, "stain_normalization": normalize})
    images = image_ops.dequantize_from_bytes(outputs[preprocessing.TRANSFORMED_IMAGE], 40).numpy()
    resized = image_ops.decode_and_resize(encoded, 40)
    expected = (image_ops.normalize_stain(resized) if normalize else resized).numpy()
    np.testing.assert_allclose(images, expected, atol=0.5 / 255 + 1e-6)
    assert normalize == (np.abs(images - resized.numpy()).max() > 0.05)


def test_transform_passes_the_patient_and_slide_positions_on_when_the_records_have_them(tissue):
    encoded = tf.stack([tf.io.encode_png(tf.cast(np.round(image * 255), tf.uint8)) for image in tissue])
    n = int(encoded.shape[0])
    positions = {"patient_id": tf.constant([[b"8863"]] * n), "patch_x": tf.constant([[1 + 50 * i] for i in range(n)],
                                                                                     tf.int64),
                 "patch_y": tf.constant([[51]] * n, tf.int64)}
    config = {"image_size": 40, "stain_normalization": 0}
    outputs = preprocessing.preprocessing_fn({"image": encoded, **positions}, config)
    assert outputs["patient_id"].numpy().tolist() == [b"8863"] * n
    assert outputs["patch_x"].numpy().tolist() == [1 + 50 * i for i in range(n)]
    assert outputs["patch_y"].shape == (n,)
    # BreakHis records have a patient (for cross-validation) but no slide position.
    breakhis = preprocessing.preprocessing_fn({"image": encoded, "patient_id": positions["patient_id"]}, config)
    assert set(breakhis) == {preprocessing.TRANSFORMED_IMAGE, "patient_id"}


def test_tissue_fraction_counts_stained_pixels_only():
    white, black, grey = (np.full((8, 8, 3), value, np.float32) for value in (1.0, 0.0, 0.5))
    pale_pink = np.tile(np.array([0.93, 0.85, 0.90], np.float32), (8, 8, 1))  # faint eosin
    half = white.copy()
    half[:, :4] = [0.75, 0.45, 0.65]  # stained on the left half, glass on the right
    fractions = image_ops.tissue_fraction(tf.constant(np.stack([white, black, grey, pale_pink, half]))).numpy()
    np.testing.assert_allclose(fractions, [0.0, 0.0, 0.0, 1.0, 0.5])
    assert fractions[3] >= image_ops.MIN_IMAGE_TISSUE_FRACTION > fractions[2]
