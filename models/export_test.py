"""Tests of the exported serving model (contract in the team brief) and its loader."""

from __future__ import annotations

import io
import json
import os

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from histopath.models import abstention, export, exported, image_ops, mil, config as model_config
import synthetic_images
from histopath.data import features
from histopath.errors import ConfigError, DataError


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _example(encoded: bytes) -> bytes:
    feature = {features.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
               features.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="module")
def encoded_images():
    rng = np.random.default_rng(0)
    # Different sizes and formats: the signature resizes every image itself.
    return [_png(synthetic_images.tissue_image(rng, 50, True)), _png(synthetic_images.tissue_image(rng, 40, False)),
            _jpeg(synthetic_images.tissue_image(rng, 64, True))]


@pytest.fixture(scope="module")
def densenet_export(densenet_32, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("serving") / "densenet" / "1")
    export.export_serving_model(
        densenet_32, path, preprocess=lambda b: image_ops.decode_and_resize(b, 32),
        model_info={"model_kind": "densenet", "model_name": "idc_densenet", "dataset": "idc",
                    "cross_validation": {"fold_runs": [{"held_out": ["patient-8863"]}]}, "trained_in": "/private/run"},
        decision_threshold=0.3, abstention_band=DENSENET_BAND)
    return path, exported.load(path)


DENSENET_BAND = {"low": 0.25, "high": 0.5, "rule": "a test band", "coverage": 0.9}


def test_densenet_export_matches_the_in_memory_model(densenet_32, densenet_export, encoded_images):
    _, loaded = densenet_export
    outputs = loaded.serving_fn(image_bytes=tf.constant(encoded_images))
    assert set(outputs) == {"probability", "label", "decision_score", "tissue_fraction", "tissue_detected",
                            "uncertainty", "not_sure"}
    assert outputs["probability"].dtype == tf.float32 and outputs["probability"].shape == (3,)
    np.testing.assert_array_equal(outputs["tissue_detected"].numpy(), [1, 1, 1])
    assert np.all(outputs["tissue_fraction"].numpy() > image_ops.MIN_IMAGE_TISSUE_FRACTION)
    assert outputs["label"].dtype == tf.int64
    decoded = image_ops.decode_and_resize(tf.constant(encoded_images), 32)
    expected = densenet_32(decoded, training=False).numpy()[:, 0]
    np.testing.assert_allclose(outputs["probability"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(outputs["label"].numpy(), (expected >= 0.3).astype(np.int64))
    # decision_score = sigmoid(logit(p) - logit(0.3)): same order as p, 0.5 at the threshold
    logit = lambda x: np.log(x) - np.log1p(-x)  # noqa: E731
    np.testing.assert_allclose(
        outputs["decision_score"].numpy(), 1 / (1 + np.exp(-(logit(expected) - logit(0.3)))), atol=1e-5)
    assert outputs["uncertainty"].dtype == tf.float32 and outputs["not_sure"].dtype == tf.int64
    np.testing.assert_allclose(outputs["uncertainty"].numpy(), abstention.uncertainty(expected, 0.3), atol=1e-5)
    np.testing.assert_array_equal(outputs["not_sure"].numpy(), abstention.not_sure(expected, DENSENET_BAND))
    from_examples = loaded.examples_fn(examples=tf.constant([_example(b) for b in encoded_images]))
    np.testing.assert_allclose(from_examples["probability"].numpy(), outputs["probability"].numpy(), atol=1e-6)
    np.testing.assert_array_equal(from_examples["label"].numpy(), outputs["label"].numpy())
    np.testing.assert_array_equal(from_examples["not_sure"].numpy(), outputs["not_sure"].numpy())
    assert loaded.model_info["abstention"] == DENSENET_BAND


def test_densenet_export_layout_and_model_info(densenet_export):
    path, loaded = densenet_export
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".")], "temp folder left"
    with open(os.path.join(path, "assets.extra", "model_info.json")) as handle:
        info = json.load(handle)
    assert info == loaded.model_info
    assert info["model_kind"] == "densenet" and info["model_name"] == "idc_densenet"
    assert info["image_size"] == 32 and info["decision_threshold"] == 0.3
    assert info["label_names"] == ["benign", "malignant"] and info["dataset"] == "idc"
    assert "created" in info and "tile_size" not in info
    assert float(loaded.saved_model.decision_threshold.numpy()) == pytest.approx(0.3)
    signature = loaded.serving_fn.structured_input_signature[1]
    assert list(signature) == ["image_bytes"] and signature["image_bytes"].dtype == tf.string
    # The model describes itself through a signature too (a model server does not serve assets.extra).
    describe = loaded.saved_model.signatures[exported.SERVING_MODEL_INFO]
    described = describe(**{exported.MODEL_INFO_REQUEST: tf.constant([""])})[exported.SERVING_MODEL_INFO].numpy()
    served = exported.served_model_info(info)
    assert len(described) == 1 and json.loads(described[0]) == served
    assert served["decision_threshold"] == 0.3 and served["model_kind"] == "densenet"
    assert served["abstention"] == {"low": DENSENET_BAND["low"], "high": DENSENET_BAND["high"]}
    assert "patient-8863" not in described[0].decode() and "/private/run" not in described[0].decode()
    many = describe(**{exported.MODEL_INFO_REQUEST: tf.constant([""] * 64)})[exported.SERVING_MODEL_INFO]
    assert many.shape == (1,)  # a batch does not multiply the answer (model servers refuse it: shape [1])


def test_predict_bytes_helper_and_bad_images(densenet_export, encoded_images):
    _, loaded = densenet_export
    rows = exported.predict_bytes(loaded, encoded_images)
    assert [set(r) for r in rows] == [{"probability", "label", "label_name", "tissue_fraction", "tissue_detected",
                                       "uncertainty", "not_sure"}] * 3
    assert all(r["label_name"] == ("malignant" if r["label"] else "benign") for r in rows)
    blank = exported.predict_bytes(loaded, [_png(np.full((40, 40, 3), 245, np.uint8))])[0]
    assert blank["tissue_detected"] is False and blank["tissue_fraction"] < image_ops.MIN_IMAGE_TISSUE_FRACTION
    assert blank["label"] is None and blank["label_name"] == exported.NO_TISSUE and blank["not_sure"] is False
    with pytest.raises(DataError, match=r"broken\.png: cannot decode image"):
        exported.predict_bytes(loaded, [encoded_images[0], encoded_images[1][:40]], names=["ok.png", "broken.png"])
    assert exported.predict_bytes(loaded, []) == []


@pytest.fixture(scope="module")
def mil_setup(tmp_path_factory):
    config = model_config.MilConfig(image_size=64, tile_size=16, encoder_filters=(8, 16),
                                    embedding_units=16, attention_dim=8)
    model = mil.build_mil_model(config)
    path = str(tmp_path_factory.mktemp("serving") / "mil" / "7")
    export.export_serving_model(
        model, path, preprocess=lambda b: image_ops.decode_and_resize(b, 64),
        model_info={"model_kind": "mil", "model_name": "breakhis_mil", "dataset": "breakhis"})
    return model, exported.load(path)


def test_mil_export_parity_attention_and_grid(mil_setup):
    model, loaded = mil_setup
    rng = np.random.default_rng(1)
    bag, kinds = synthetic_images.bag_image(rng, grid=4, tile=16, positive=True, n_glass=3)
    encoded = [_png(bag), _png(synthetic_images.tissue_image(rng, 80, False))]
    outputs = loaded.serving_fn(image_bytes=tf.constant(encoded))
    assert set(outputs) == {"probability", "label", "decision_score", "tissue_fraction", "tissue_detected",
                            "uncertainty", "not_sure", "attention", "grid_shape"}
    assert outputs["attention"].shape == (2, 16) and outputs["attention"].dtype == tf.float32
    assert outputs["grid_shape"].dtype == tf.int32
    np.testing.assert_array_equal(outputs["grid_shape"].numpy(), [[4, 4], [4, 4]])
    expected = model(image_ops.decode_and_resize(tf.constant(encoded), 64), training=False)
    np.testing.assert_allclose(outputs["probability"].numpy(), expected["probability"].numpy()[:, 0], atol=1e-5)
    np.testing.assert_allclose(outputs["attention"].numpy(), expected["attention"].numpy(), atol=1e-5)
    np.testing.assert_allclose(outputs["attention"].numpy().sum(axis=1), 1.0, atol=1e-5)
    assert np.all(outputs["attention"].numpy()[0][kinds == 2] == 0.0)
    from_examples = loaded.examples_fn(examples=tf.constant([_example(b) for b in encoded]))
    for key in outputs:
        np.testing.assert_allclose(from_examples[key].numpy(), outputs[key].numpy(), atol=1e-6)
    info = loaded.model_info
    assert info["model_kind"] == "mil" and info["tile_size"] == 16 and info["grid_shape"] == [4, 4]
    assert info["test_time_augmentation"] is False
    row = exported.predict_bytes(loaded, encoded[:1])[0]
    assert row["grid_shape"] == [4, 4] and len(row["attention"]) == 16


def _symmetries(array: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of a square array in `image_ops.square_symmetry`'s order, in NumPy."""
    turns = [np.rot90(array, index // 2) for index in range(8)]
    return [np.ascontiguousarray(t[:, ::-1] if index % 2 else t) for index, t in enumerate(turns)]


def test_test_time_augmentation_averages_the_eight_symmetries(mil_setup, tmp_path):
    model, _ = mil_setup
    bag, _ = synthetic_images.bag_image(np.random.default_rng(5), grid=4, tile=16, positive=True, n_glass=3)
    plain = export.make_predictor(model)
    averaged = export.make_predictor(model, test_time_augmentation=True)
    variants = _symmetries(bag)
    plain_probabilities = [float(plain(tf.constant(v[None]))["probability"][0]) for v in variants]
    assert np.ptp(plain_probabilities) > 1e-4  # the model alone is not invariant
    got = averaged(tf.constant(bag[None]))
    assert got["probability"].shape == (1,) and got["attention"].shape == (1, 16)
    np.testing.assert_allclose(got["probability"].numpy(), [np.mean(plain_probabilities)], atol=1e-6)
    np.testing.assert_allclose(got["attention"].numpy().sum(), 1.0, atol=1e-5)
    # Averaged over the group: every turn or mirror of the image gets the same probability,
    # and its attention map is the original map turned or mirrored alike.
    attention_grids = _symmetries(got["attention"].numpy().reshape(4, 4))
    for variant, attention_grid in zip(variants, attention_grids):
        moved = averaged(tf.constant(variant[None]))
        np.testing.assert_allclose(moved["probability"].numpy(), got["probability"].numpy(), atol=1e-6)
        np.testing.assert_allclose(moved["attention"].numpy().reshape(4, 4), attention_grid, atol=1e-6)
    # The exported signatures compute the same, and say so in model_info.
    path = str(tmp_path / "1")
    export.export_serving_model(model, path, preprocess=lambda b: image_ops.decode_and_resize(b, 64),
                                model_info={"model_kind": "mil"}, test_time_augmentation=True)
    loaded = exported.load(path)
    assert loaded.model_info["test_time_augmentation"] is True
    encoded = [_png(bag)]
    served = loaded.serving_fn(image_bytes=tf.constant(encoded))
    expected = averaged(image_ops.decode_and_resize(tf.constant(encoded), 64))
    np.testing.assert_allclose(served["probability"].numpy(), expected["probability"].numpy(), atol=1e-6)
    np.testing.assert_allclose(served["attention"].numpy(), expected["attention"].numpy(), atol=1e-6)


def test_mil_with_an_instance_classifier_also_returns_tile_probabilities(tmp_path):
    config = model_config.MilConfig(image_size=64, tile_size=16, encoder_filters=(8, 16), embedding_units=16,
                                    attention_dim=8, instance_loss_weight=0.5)
    model = mil.build_mil_model(config)
    bag, kinds = synthetic_images.bag_image(np.random.default_rng(7), grid=4, tile=16, positive=True, n_glass=3)
    path = str(tmp_path / "1")
    export.export_serving_model(model, path, preprocess=lambda b: image_ops.decode_and_resize(b, 64),
                                model_info={"model_kind": "mil"})
    loaded = exported.load(path)
    assert loaded.model_info["outputs"] == ["probability", "label", "decision_score", "tissue_fraction",
                                            "tissue_detected", "uncertainty", "not_sure", "attention",
                                            "tile_probability", "grid_shape"]
    encoded = [_png(bag)]
    served = loaded.serving_fn(image_bytes=tf.constant(encoded))
    expected = model(image_ops.decode_and_resize(tf.constant(encoded), 64), training=False)
    tiles = served["tile_probability"].numpy()[0]
    np.testing.assert_allclose(tiles[kinds != 2], tf.sigmoid(expected["instance_logit"]).numpy()[0][kinds != 2],
                               atol=1e-5)
    assert np.all(tiles[kinds == 2] == 0.0)  # glass
    assert len(exported.predict_bytes(loaded, encoded)[0]["tile_probability"]) == 16
    # Averaged over the 8 symmetries, the map turns with the image, like the attention.
    averaged = export.make_predictor(model, test_time_augmentation=True)
    grids = _symmetries(averaged(tf.constant(bag[None]))["tile_probability"].numpy().reshape(4, 4))
    for variant, grid in zip(_symmetries(bag), grids):
        moved = averaged(tf.constant(variant[None]))["tile_probability"].numpy().reshape(4, 4)
        np.testing.assert_allclose(moved, grid, atol=1e-6)


def test_a_band_over_everything_is_not_sure_of_tissue_but_not_of_a_black_image(mil_setup, tmp_path):
    model, _ = mil_setup
    path = str(tmp_path / "1")
    export.export_serving_model(model, path, preprocess=lambda b: image_ops.decode_and_resize(b, 64),
                                model_info={"model_kind": "mil"}, decision_threshold=0.5,
                                abstention_band={"low": 0.0, "high": 1.0})
    loaded = exported.load(path)
    tissue = _png(synthetic_images.tissue_image(np.random.default_rng(3), 64, True))
    black = _png(np.zeros((64, 64, 3)))
    rows = exported.predict_bytes(loaded, [tissue, black])
    assert [row["not_sure"] for row in rows] == [True, False]  # the black image keeps "no tissue"
    raw = loaded.serving_fn(image_bytes=tf.constant([black]))
    assert (int(raw["tissue_detected"][0]), int(raw["label"][0])) == (0, exported.NO_CLASS)  # no class, raw too
    assert rows[1]["label_name"] == exported.NO_TISSUE
    assert rows[0]["uncertainty"] == pytest.approx(float(abstention.uncertainty(rows[0]["probability"], 0.5)),
                                                   abs=1e-5)
    described = loaded.saved_model.signatures[exported.SERVING_MODEL_INFO](request=tf.constant([""]))
    assert json.loads(described["model_info"].numpy()[0])["abstention"] == loaded.model_info["abstention"]
    with pytest.raises(ConfigError, match="0 <= low <= high <= 1"):
        export.export_serving_model(model, str(tmp_path / "2"), preprocess=lambda b: image_ops.decode_and_resize(b, 64),
                                    model_info={"model_kind": "mil"}, abstention_band={"low": 0.6, "high": 0.4})


def test_without_a_band_the_model_is_never_not_sure(mil_setup, tmp_path):
    model, _ = mil_setup
    path = str(tmp_path / "1")
    export.export_serving_model(model, path, preprocess=lambda b: image_ops.decode_and_resize(b, 64),
                                model_info={"model_kind": "mil"}, decision_threshold=0.5)
    loaded = exported.load(path)
    encoded = [_png(synthetic_images.tissue_image(np.random.default_rng(s), 64, s % 2 == 0)) for s in range(4)]
    assert [row["not_sure"] for row in exported.predict_bytes(loaded, encoded)] == [False] * 4
    assert loaded.model_info["abstention"] == {"low": None, "high": None}


def test_test_time_augmentation_of_densenet_is_invariant(densenet_32):
    image = synthetic_images.tissue_image(np.random.default_rng(6), 32, True).astype(np.float32)
    plain = export.make_predictor(densenet_32)
    averaged = export.make_predictor(densenet_32, test_time_augmentation=True)
    variants = np.stack(_symmetries(image))
    plain_probabilities = plain(tf.constant(variants))["probability"].numpy()
    assert np.ptp(plain_probabilities) > 1e-5
    np.testing.assert_allclose(averaged(tf.constant(variants))["probability"].numpy(),
                               np.full(8, plain_probabilities.mean()), atol=1e-5)


def test_export_replaces_an_existing_version_and_validates(mil_setup, tmp_path):
    model, _ = mil_setup
    path = tmp_path / "m" / "1"
    path.mkdir(parents=True)
    (path / "stale.txt").write_text("old")
    preprocess = lambda b: image_ops.decode_and_resize(b, 64)  # noqa: E731
    export.export_serving_model(model, str(path), preprocess=preprocess, model_info={"model_kind": "mil"})
    assert not (path / "stale.txt").exists() and (path / "saved_model.pb").exists()
    assert sorted(os.listdir(path.parent)) == ["1"]
    with pytest.raises(ConfigError, match="model_kind"):
        export.export_serving_model(model, str(tmp_path / "x"), preprocess=preprocess, model_info={})
    with pytest.raises(ConfigError, match="not one"):
        export.export_serving_model(model, str(tmp_path / "x"), preprocess=preprocess,
                                    model_info={"model_kind": "densenet"})
    assert not (tmp_path / "x").exists()


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match=r"neither a model version folder \(no saved_model.pb\)"):
        exported.load(str(tmp_path))
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(DataError, match="missing assets.extra/model_info.json"):
        exported.load(str(tmp_path))


def test_preprocess_module_with_a_lookup_table_is_saved_with_the_model(mil_setup, tmp_path):
    """Like the TF-Transform preprocessor: a module owning a table resource."""
    model, _ = mil_setup

    class TablePreprocess(tf.Module):
        def __init__(self):
            super().__init__()
            self.gains = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(["gain"], [0.5]), default_value=1.0)

        def __call__(self, image_bytes):
            return image_ops.decode_and_resize(image_bytes, 64) * self.gains.lookup(tf.constant("gain"))

    path = str(tmp_path / "1")
    preprocess = TablePreprocess()
    export.export_serving_model(model, path, preprocess=preprocess, model_info={"model_kind": "mil"})
    loaded = exported.load(path)
    encoded = [_png(synthetic_images.tissue_image(np.random.default_rng(3), 64, True))]
    expected = model(image_ops.decode_and_resize(tf.constant(encoded), 64) * 0.5, training=False)
    for signature, inputs in ((loaded.serving_fn, {"image_bytes": tf.constant(encoded)}),
                              (loaded.examples_fn, {"examples": tf.constant([_example(encoded[0])])})):
        got = signature(**inputs)
        np.testing.assert_allclose(got["probability"].numpy(), expected["probability"].numpy()[:, 0], atol=1e-5)
