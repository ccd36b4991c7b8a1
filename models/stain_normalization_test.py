"""Tests of the Macenko and Reinhard stain normalisations, eagerly, in the Transform graph and
in a saved serving signature."""

from __future__ import annotations

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np
import pytest
import tensorflow as tf

from histopath.models import image_ops, preprocessing, stain_normalization as sn


def _unit(vector) -> np.ndarray:
    vector = np.asarray(vector, np.float64)
    return vector / np.linalg.norm(vector)


# A stain pair unlike the reference: what Macenko must find.
KNOWN_H, KNOWN_E = _unit([0.65, 0.70, 0.29]), _unit([0.27, 0.85, 0.45])


def _two_stain_images(n: int = 3, size: int = 24, amount: float = 1.0, seed: int = 0) -> np.ndarray:
    """RGB images made from H and E concentrations through the known stains: 10 % pure H, 10 %
    pure E pixels (the extreme angles), the rest mixtures; every pixel is tissue."""
    rng = np.random.default_rng(seed)
    pixels = size * size
    amounts = rng.uniform(0.8, 2.0, (n, pixels, 2))
    kind = rng.permutation(np.arange(pixels) % 10)
    amounts[:, kind == 0, 1] = 0.0  # pure haematoxylin
    amounts[:, kind == 1, 0] = 0.0  # pure eosin
    density = amount * amounts @ np.stack([KNOWN_H, KNOWN_E])  # (n, p, 3)
    rgb = (sn.MACENKO_LIGHT * np.exp(-density) - 1.0) / 255.0
    return rgb.reshape(n, size, size, 3).astype(np.float32)


def test_method_names_accept_the_older_boolean_form_and_reject_others():
    assert [sn.method_name(v) for v in (True, 1, False, 0, None)] == ["od_scaling"] * 2 + ["none"] * 3
    assert [sn.method_name(m) for m in sn.METHODS] == list(sn.METHODS)
    with pytest.raises(ValueError, match="macenko, reinhard"):
        sn.method_name("vahadane")
    with pytest.raises(ValueError):
        sn.method_name(2)


def test_macenko_recovers_a_known_stain_matrix():
    stains, usable = sn.macenko_stains(tf.constant(_two_stain_images()))
    assert stains.shape == (3, 3, 2) and usable.numpy().all()
    for image in stains.numpy():
        assert np.dot(image[:, 0], KNOWN_H) > 0.999 and np.dot(image[:, 1], KNOWN_E) > 0.999


def test_macenko_maps_pale_and_dark_copies_to_the_reference_stains_and_amounts():
    pale, dark = (tf.constant(_two_stain_images(amount=a)) for a in (0.6, 1.3))
    normalized_pale, normalized_dark = sn.macenko(pale).numpy(), sn.macenko(dark).numpy()
    assert np.abs(pale.numpy() - dark.numpy()).mean() > 0.1
    assert np.abs(normalized_pale - normalized_dark).max() < 2e-3
    stains, _ = sn.macenko_stains(tf.constant(normalized_pale))
    np.testing.assert_allclose(stains.numpy(), np.tile(np.array(sn.MACENKO_REFERENCE_STAINS), (3, 1, 1)), atol=0.01)
    density = sn.optical_density(tf.constant(normalized_pale)).numpy().reshape(3, -1, 3)
    amounts = density @ np.linalg.pinv(np.array(sn.MACENKO_REFERENCE_STAINS)).T
    np.testing.assert_allclose(np.percentile(amounts, 99, axis=1), np.tile(sn.MACENKO_REFERENCE_MAX_CONCENTRATIONS,
                                                                            (3, 1)), rtol=0.02)


def test_reinhard_maps_an_images_lab_statistics_to_the_reference():
    source, target = _two_stain_images(n=2, seed=1), _two_stain_images(n=1, amount=0.7, seed=2)
    means, stds = sn.reinhard_reference(tf.constant(target))
    normalized = sn.reinhard(tf.constant(source), means, stds)
    lab = sn.rgb_to_lab(normalized).numpy().reshape(2, -1, 3)  # every source pixel is tissue
    np.testing.assert_allclose(lab.mean(axis=1), np.tile(means.numpy(), (2, 1)), atol=1e-3)
    np.testing.assert_allclose(lab.std(axis=1), np.tile(stds.numpy(), (2, 1)), rtol=0.01, atol=1e-4)
    # Against the published standard: the means land near it (its pale pixels clip at white).
    default = sn.rgb_to_lab(sn.reinhard(tf.constant(source))).numpy().reshape(2, -1, 3)
    np.testing.assert_allclose(default.mean(axis=1), np.tile(sn.REINHARD_REFERENCE_MEANS, (2, 1)), atol=0.05)


def test_reinhard_colour_space_round_trips_and_matches_numpy():
    images = np.random.default_rng(4).uniform(0.05, 1.0, (2, 8, 8, 3)).astype(np.float32)
    lab = sn.rgb_to_lab(tf.constant(images)).numpy()
    lms = images.reshape(-1, 3).astype(np.float64) * 255.0 @ np.array(sn.RGB_TO_LMS).T
    expected = np.log(lms) @ np.array(sn._LMS_TO_LAB).T
    np.testing.assert_allclose(lab.reshape(-1, 3), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sn.lab_to_rgb(tf.constant(lab)).numpy(), images, atol=1e-4)


@pytest.mark.parametrize("method", sn.METHODS)
def test_glass_stays_glass_and_degenerate_images_give_no_nan(method):
    white = np.ones((1, 16, 16, 3), np.float32)
    glass = np.full((1, 16, 16, 3), 0.96, np.float32)
    black = np.zeros((1, 16, 16, 3), np.float32)
    pink = np.tile(np.array([0.8, 0.4, 0.6], np.float32), (1, 16, 16, 1))  # one colour, all tissue
    noise = np.random.default_rng(5).uniform(0, 1, (1, 16, 16, 3)).astype(np.float32)
    images = np.concatenate([white, glass, black, pink, noise])
    out = sn.normalize(tf.constant(images), method).numpy()
    assert out.shape == images.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out[:2], images[:2], atol=1e-5)


def test_a_tissue_image_keeps_its_glass_bright():
    image = _two_stain_images(n=1)
    image[0, :8] = 1.0  # a strip of white glass
    for method in ("macenko", "reinhard"):
        out = sn.normalize(tf.constant(image), method).numpy()
        assert out[0, :8].min() > 0.9, method
        assert np.abs(out[0, 8:] - image[0, 8:]).mean() > 0.02, method  # the tissue did change


def _encoded(images: np.ndarray) -> tf.Tensor:
    return tf.stack([tf.io.encode_png(tf.cast(np.round(image * 255), tf.uint8)) for image in images])


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_preprocessing_fn_applies_the_configured_method(method):
    encoded = _encoded(_two_stain_images(n=2, size=20))
    outputs = preprocessing.preprocessing_fn({"image": encoded}, {"image_size": 20, "stain_normalization": method})
    stored = image_ops.dequantize_from_bytes(outputs[preprocessing.TRANSFORMED_IMAGE], 20).numpy()
    expected = sn.normalize(image_ops.decode_and_resize(encoded, 20), method).numpy()
    np.testing.assert_allclose(stored, expected, atol=0.5 / 255 + 1e-6)


def test_the_transform_graph_and_a_saved_serving_signature_match_the_eager_function(tmp_path):
    """A real tf.Transform analysis writes the graph; a SavedModel serves it through the
    exported model's preprocessor; both give what `normalize` gives eagerly."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    size = 20
    images = np.concatenate([_two_stain_images(n=3, size=size, seed=6), np.ones((1, size, size, 3), np.float32)])
    encoded = _encoded(images)
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    rows = [{"image": value} for value in encoded.numpy()]
    for method in ("macenko", "reinhard"):
        graph_dir = str(tmp_path / method / "transform")

        def preprocessing_fn(inputs, method=method):
            return preprocessing.preprocessing_fn(inputs, {"image_size": size, "stain_normalization": method})

        with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=str(tmp_path / method / "tmp")):
            transform_fn = (pipeline | beam.Create(rows), metadata) | tft_beam.AnalyzeDataset(preprocessing_fn)
            _ = transform_fn | tft_beam.WriteTransformFn(graph_dir)
            _ = metadata | tft_beam.WriteMetadata(f"{graph_dir}/{tft.TFTransformOutput.RAW_METADATA_DIR}", pipeline)
        expected = sn.normalize(image_ops.decode_and_resize(encoded, size), method).numpy()
        output = tft.TFTransformOutput(graph_dir)
        transformed = output.transform_raw_features({"image": encoded})[preprocessing.TRANSFORMED_IMAGE]
        np.testing.assert_allclose(image_ops.dequantize_from_bytes(transformed, size).numpy(), expected,
                                   atol=0.5 / 255 + 1e-6)

        module = tf.Module()
        module.preprocessor = preprocessing.TransformedImagePreprocessor(output, size, size)
        module.serve = tf.function(lambda image_bytes: {"images": module.preprocessor(image_bytes)},
                                   input_signature=[tf.TensorSpec([None], tf.string)])
        saved = str(tmp_path / method / "serving")
        tf.saved_model.save(module, saved, signatures={"serving_default": module.serve})
        served = tf.saved_model.load(saved).signatures["serving_default"](image_bytes=encoded)["images"]
        np.testing.assert_allclose(served.numpy(), expected, atol=0.5 / 255 + 1e-6)
        assert np.abs(expected[:3] - image_ops.decode_and_resize(encoded, size).numpy()[:3]).mean() > 0.02
