"""Tests of the DenseNet201 transfer-learning classifier (tiny 32-48 px inputs)."""

from __future__ import annotations

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from histopath.models import densenet, config as model_config, training
import synthetic_images
from histopath.errors import ConfigError


@pytest.fixture(scope="module")
def images():
    return synthetic_images.image_dataset(4, 32, seed=0)[0]


def test_output_shape_range_and_dtype(densenet_32, images):
    probability = densenet_32(images, training=False)
    assert probability.shape == (4, 1) and probability.dtype == tf.float32
    assert np.all((probability.numpy() > 0) & (probability.numpy() < 1))
    assert densenet_32.input_shape == (None, 32, 32, 3)
    assert densenet.backbone(densenet_32).name == densenet.BACKBONE_NAME


def test_fine_tune_schedule_freezes_all_but_the_top_blocks(densenet_32):
    base = densenet.backbone(densenet_32)
    try:
        assert densenet.set_backbone_trainable(densenet_32, 0) == 0
        assert densenet_32.trainable_weights and not base.trainable_weights
        top_two = densenet.set_backbone_trainable(densenet_32, 2)
        trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
        assert trainable and all(name.startswith(("conv5_block31", "conv5_block32")) for name in trainable)
        assert not any(isinstance(base.get_layer(n), keras.layers.BatchNormalization) for n in trainable)
        assert top_two == 4  # two blocks x (1x1 conv kernel, 3x3 conv kernel); BN frozen
        with_bn = densenet.set_backbone_trainable(densenet_32, 2, freeze_batchnorm=False)
        assert with_bn > top_two
        everything = densenet.set_backbone_trainable(densenet_32, -1, freeze_batchnorm=False)
        assert everything == len(base.weights) - 2 * sum(
            isinstance(layer, keras.layers.BatchNormalization) for layer in base.layers)
    finally:
        densenet.set_backbone_trainable(densenet_32, -1, freeze_batchnorm=False)


def test_whole_model_weights_file_loads_into_a_fresh_model(densenet_32, images, tmp_path):
    path = str(tmp_path / "model.h5")
    densenet.set_backbone_trainable(densenet_32, 3)  # saving order must not matter
    densenet_32.save_weights(path)
    densenet.set_backbone_trainable(densenet_32, -1, freeze_batchnorm=False)
    config = model_config.DenseNetConfig(image_size=32, head_units=8, weights=path)
    fresh = densenet.build_densenet_model(config)
    np.testing.assert_allclose(fresh(images).numpy(), densenet_32(images).numpy(), atol=1e-6)


def test_backbone_only_warm_start_at_another_size_and_head(densenet_32, images, tmp_path):
    path = str(tmp_path / "backbone.h5")
    densenet.save_backbone_weights(densenet_32, path)
    warm = densenet.build_densenet_model(
        model_config.DenseNetConfig(image_size=48, head_units=0, weights=path))
    source = {w.name: w.numpy() for w in densenet.backbone(densenet_32).weights}
    target = densenet.backbone(warm).weights
    assert len(target) == len(source)
    for weight in target:
        np.testing.assert_array_equal(weight.numpy(), source[weight.name])
    # The head (another shape: no hidden layer) keeps its fresh initialisation.
    assert warm.get_layer("probability").kernel.shape == (1920, 1)
    assert warm(np.zeros((1, 48, 48, 3), np.float32)).shape == (1, 1)


def test_bad_weights_files_are_clear_errors(densenet_32, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        densenet.load_weights_file(densenet_32, str(tmp_path / "missing.h5"))
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(ConfigError, match="notes.h5"):
        densenet.load_weights_file(densenet_32, str(text))
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="unrelated")])
    other_path = str(tmp_path / "other.h5")
    other.save_weights(other_path)
    with pytest.raises(ConfigError, match="no weight in this file matches"):
        densenet.load_weights_file(densenet_32, other_path)


def test_bfloat16_variant_builds_and_outputs_float32(images):
    model = densenet.build_densenet_model(
        model_config.DenseNetConfig(image_size=32, mixed_precision="mixed_bfloat16"))
    assert densenet.backbone(model).layers[2].compute_dtype == "bfloat16"
    probability = model(images, training=False)
    assert probability.dtype == tf.float32 and probability.shape == (4, 1)
    assert keras.mixed_precision.global_policy().name == "float32", "policy must be restored"


def test_densenet_learns_a_synthetic_signal(tmp_path):
    """Both phases run; held-out AUC is far above chance (the real DenseNet201, 32 px)."""
    train_images, train_labels = synthetic_images.image_dataset(128, 32, seed=1)
    val_images, val_labels = synthetic_images.image_dataset(48, 32, seed=2)
    test_images, test_labels = synthetic_images.image_dataset(64, 32, seed=3)
    config = model_config.DenseNetConfig(
        image_size=32, weights=None, dropout=0.1, fine_tune_blocks=1,
        head_learning_rate=3e-3, fine_tune_learning_rate=1e-4)
    keras.utils.set_random_seed(3)
    model = densenet.build_densenet_model(config)
    train_ds = tf.data.Dataset.from_tensor_slices((train_images, train_labels)).shuffle(128, seed=0).batch(16)
    val_ds = tf.data.Dataset.from_tensor_slices((val_images, val_labels)).batch(16)
    history = training.train_model(
        model, train_ds, val_ds, config,
        model_config.TrainingConfig(epochs=4, fine_tune_epochs=1, early_stopping_patience=3, verbose=0),
        str(tmp_path / "logs"),
    )
    assert history["phase"].count("head") >= 1 and history["phase"][-1] == "fine_tune"
    assert list(tmp_path.joinpath("logs").rglob("events.out.tfevents*")), "no TensorBoard logs"
    held_out_auc = synthetic_images.auc(test_labels, model(test_images, training=False).numpy())
    assert held_out_auc > 0.8, f"held-out AUC {held_out_auc:.3f} ({history})"
