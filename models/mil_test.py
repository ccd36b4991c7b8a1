"""Tests of the attention-MIL classifier and its GatedAttentionPooling layer."""

from __future__ import annotations

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from histopath.models import mil, config as model_config, training
import synthetic_images

CONFIG = model_config.MilConfig(
    image_size=64, tile_size=16, encoder_filters=(8, 16), embedding_units=16, attention_dim=8,
    dropout=0.0,
)


@pytest.fixture(scope="module")
def mil_model():
    keras.utils.set_random_seed(0)
    return mil.build_mil_model(CONFIG)


@pytest.fixture(scope="module")
def bags():
    return synthetic_images.bag_dataset(6, grid=4, tile=16, seed=5)


def _pooling_inputs(seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(3, 7, 5)).astype(np.float32)
    mask = rng.random((3, 7)) < 0.6
    mask[:, 0] = True  # every bag keeps at least one instance
    return features, mask


@pytest.mark.parametrize("gated", [True, False])
def test_attention_sums_to_one_over_unmasked_and_is_zero_on_masked(gated):
    features, mask = _pooling_inputs()
    layer = mil.GatedAttentionPooling(attention_dim=4, gated=gated)
    pooled, attention = layer(features, mask=mask)
    attention = attention.numpy()
    assert pooled.shape == (3, 5) and attention.shape == (3, 7)
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(attention[~mask] == 0.0)
    assert np.all(attention[mask] > 0.0)
    expected = np.einsum("bn,bnf->bf", attention, features)
    np.testing.assert_allclose(pooled.numpy(), expected, atol=1e-5)


def test_masked_instance_content_does_not_change_the_pooling():
    features, mask = _pooling_inputs(1)
    layer = mil.GatedAttentionPooling(attention_dim=4)
    pooled, attention = layer(features, mask=mask)
    changed = features.copy()
    changed[~mask] = 1e3 * np.random.default_rng(2).normal(size=changed[~mask].shape)
    pooled_changed, attention_changed = layer(changed, mask=mask)
    np.testing.assert_array_equal(pooled.numpy(), pooled_changed.numpy())
    np.testing.assert_array_equal(attention.numpy(), attention_changed.numpy())
    # ...whereas changing an unmasked instance does change it.
    changed[0, 0] += 1.0
    assert not np.allclose(layer(changed, mask=mask)[0].numpy()[0], pooled.numpy()[0])


def test_no_mask_is_plain_softmax():
    features, _ = _pooling_inputs()
    _, attention = mil.GatedAttentionPooling(attention_dim=4)(features)
    np.testing.assert_allclose(attention.numpy().sum(axis=1), 1.0, atol=1e-6)
    assert np.all(attention.numpy() > 0)


def test_pooling_layer_config_round_trip():
    features, mask = _pooling_inputs()
    layer = mil.GatedAttentionPooling(attention_dim=6, gated=False, kernel_regularizer="l2", name="pool")
    expected = layer(features, mask=mask)
    config = layer.get_config()
    assert config["attention_dim"] == 6 and config["gated"] is False
    clone = mil.GatedAttentionPooling.from_config(config)
    clone(features, mask=mask)
    clone.set_weights(layer.get_weights())
    for want, got in zip(expected, clone(features, mask=mask)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)
    assert keras.layers.deserialize(keras.layers.serialize(layer)).get_config() == config


def test_model_outputs_shapes_and_masks_glass_tiles(mil_model, bags):
    images, _, kinds = bags
    outputs = mil_model(images, training=False)
    assert set(outputs) == {"probability", "attention"}
    assert outputs["probability"].shape == (6, 1) and outputs["probability"].dtype == tf.float32
    assert outputs["attention"].shape == (6, CONFIG.n_tiles) and outputs["attention"].dtype == tf.float32
    attention = outputs["attention"].numpy()
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(attention[kinds == 2] == 0.0), "glass tiles must get no attention"
    assert np.all(attention[kinds != 2] > 0.0)


def test_changing_a_masked_tile_does_not_change_the_prediction(mil_model, bags):
    images, _, kinds = bags
    before = mil_model(images[:1], training=False)
    glass_index = int(np.flatnonzero(kinds[0] == 2)[0])
    row, col = divmod(glass_index, CONFIG.grid_shape[1])
    changed = images[:1].copy()
    tile = slice(row * 16, (row + 1) * 16), slice(col * 16, (col + 1) * 16)
    changed[0, tile[0], tile[1]] = 0.99  # other glass: still background, different pixels
    changed[0, tile[0].start, tile[1].start] = 0.0  # plus a dust speck
    after = mil_model(changed, training=False)
    np.testing.assert_array_equal(before["probability"].numpy(), after["probability"].numpy())
    np.testing.assert_array_equal(before["attention"].numpy(), after["attention"].numpy())


def test_an_all_glass_image_keeps_every_tile():
    rng = np.random.default_rng(0)
    image = synthetic_images.glass_image(rng, 64)[None]
    model = mil.build_mil_model(CONFIG)
    attention = model(image)["attention"].numpy()
    np.testing.assert_allclose(attention.sum(), 1.0, atol=1e-5)
    assert np.all(attention > 0)


def test_model_config_and_save_load_round_trip(mil_model, bags, tmp_path):
    images = bags[0]
    expected = mil_model(images, training=False)
    clone = keras.Model.from_config(mil_model.get_config(), custom_objects=mil.CUSTOM_OBJECTS)
    clone.set_weights(mil_model.get_weights())
    path = str(tmp_path / "mil.keras")
    mil_model.save(path)
    loaded = keras.models.load_model(path)
    for other in (clone, loaded):
        got = other(images, training=False)
        for key in ("probability", "attention"):
            np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), atol=1e-6)


def test_bfloat16_variant_outputs_float32(bags):
    model = mil.build_mil_model(CONFIG.replace(mixed_precision="mixed_bfloat16"))
    assert model.get_layer("attention_pooling").compute_dtype == "bfloat16"
    outputs = model(bags[0], training=False)
    assert outputs["probability"].dtype == tf.float32 and outputs["attention"].dtype == tf.float32
    np.testing.assert_allclose(outputs["attention"].numpy().sum(axis=1), 1.0, atol=1e-3)
    assert keras.mixed_precision.global_policy().name == "float32", "policy must be restored"


def test_mil_learns_bags_with_a_few_malignant_tiles(tmp_path):
    train_images, train_labels, _ = synthetic_images.bag_dataset(192, grid=4, tile=16, seed=10)
    val_images, val_labels, _ = synthetic_images.bag_dataset(48, grid=4, tile=16, seed=11)
    test_images, test_labels, test_kinds = synthetic_images.bag_dataset(64, grid=4, tile=16, seed=12)
    config = CONFIG.replace(learning_rate=5e-3, dropout=0.1)
    keras.utils.set_random_seed(1)
    model = mil.build_mil_model(config)
    train_ds = tf.data.Dataset.from_tensor_slices((train_images, train_labels)).shuffle(192, seed=1).batch(16)
    val_ds = tf.data.Dataset.from_tensor_slices((val_images, val_labels)).batch(16)
    history = training.train_model(
        model, train_ds, val_ds, config,
        model_config.TrainingConfig(epochs=12, early_stopping_patience=4, verbose=0, seed=1),
        str(tmp_path / "logs"),
    )
    assert set(history["phase"]) == {"train"} and "val_auc" in history
    outputs = model(test_images, training=False)
    held_out_auc = synthetic_images.auc(test_labels, outputs["probability"].numpy())
    assert held_out_auc > 0.85, f"held-out AUC {held_out_auc:.3f} ({history})"
    # Attention is a distribution over the tissue tiles only, for every held-out bag.
    # (Whether it concentrates on the malignant tiles depends on longer training than a
    # unit test affords: in 12 epochs the classifier may rely on the pooled mean.)
    attention = outputs["attention"].numpy()
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(attention[test_kinds == 2] == 0.0)


def test_instance_loss_on_tiny_bags_matches_the_rule():
    # Bag 0 benign: every tissue tile (not tile 3) is a benign target.
    # Bag 1 malignant: only its most-attended tissue tile (tile 2; tile 0 is glass) is malignant.
    labels = np.array([[0.0], [1.0]], np.float32)
    attention = np.array([[0.1, 0.2, 0.7, 0.0], [0.0, 0.3, 0.7, 0.0]], np.float32)
    logits = np.array([[0.5, -1.0, 2.0, 9.0], [9.0, 3.0, -0.5, 4.0]], np.float32)
    mask = np.array([[1, 1, 1, 0], [0, 1, 1, 1]], np.float32)
    attention[1, 0] = 0.9  # glass with high attention must not count as the top tile

    def bce(target, logit):
        probability = 1.0 / (1.0 + np.exp(-logit))
        return -(target * np.log(probability) + (1 - target) * np.log(1 - probability))

    benign = np.mean([bce(0.0, v) for v in (0.5, -1.0, 2.0)])
    malignant = bce(1.0, -0.5)
    got = mil.instance_loss(labels, attention, logits, mask).numpy()
    assert got == pytest.approx((benign + malignant) / 2, rel=1e-5)


def test_instance_classifier_outputs_train_and_round_trip(bags, tmp_path):
    images, labels, kinds = bags
    config = CONFIG.replace(instance_loss_weight=0.5)
    keras.utils.set_random_seed(0)
    model = mil.build_mil_model(config)
    assert isinstance(model, mil.AttentionMilModel) and model.instance_loss_weight == 0.5
    outputs = model(images, training=False)
    assert set(outputs) == {"probability", "attention", "instance_logit", "tissue_mask"}
    assert outputs["instance_logit"].shape == (6, CONFIG.n_tiles)
    np.testing.assert_array_equal(outputs["tissue_mask"].numpy(), (kinds != 2).astype(np.float32))
    # The compiled loss gains exactly weight * instance_loss.
    training.compile_model(model, 1e-3, multi_output=True)
    targets = {"probability": tf.constant(labels.reshape(-1, 1).astype(np.float32))}
    with_instance = float(model.compute_loss(images, targets, outputs))
    model.instance_loss_weight = 0.0
    bag_only = float(model.compute_loss(images, targets, outputs))
    model.instance_loss_weight = 0.5
    expected = 0.5 * mil.instance_loss(labels, outputs["attention"], outputs["instance_logit"],
                                       outputs["tissue_mask"]).numpy()
    assert with_instance - bag_only == pytest.approx(expected, rel=1e-4)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)
    history = training.train_model(model, dataset, dataset, config,
                                   model_config.TrainingConfig(epochs=1, verbose=0), str(tmp_path / "logs"))
    assert np.isfinite(history["loss"][0])
    assert np.isfinite(history["instance_loss"][0]) and history["instance_loss"][0] > 0
    assert np.isfinite(history["val_instance_loss"][0])
    assert not any(w.name.startswith(("total", "count")) for w in model.weights), "metric state is no weight"
    path = str(tmp_path / "mil.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, mil.AttentionMilModel) and loaded.instance_loss_weight == 0.5
    np.testing.assert_allclose(loaded(images)["probability"].numpy(), model(images)["probability"].numpy(),
                               atol=1e-6)
