"""Tests of the training loop's data handling (the learning tests are per model)."""

from __future__ import annotations

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np
import pytest
import tensorflow as tf

from histopath.models import mil, config as model_config, training
import synthetic_images
from histopath.errors import ConfigError, DataError

SMALL_MIL = model_config.MilConfig(image_size=32, tile_size=16, encoder_filters=(4,), embedding_units=4,
                                   attention_dim=4)


def test_class_weights_are_balanced():
    assert training.class_weights_from_counts({0: 30, 1: 10}) == [40 / 60, 40 / 20]
    assert training.class_weights_from_counts({0: 5, 1: 0}) is None
    with pytest.raises(DataError, match="empty"):
        training.class_weights_from_counts({0: 0, 1: 0})


def test_count_labels_on_finite_and_repeated_datasets():
    labels = np.array([0, 0, 1, 0, 1, 0, 0, 0], np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((8, 2, 2, 3), np.float32), labels)).batch(4)
    assert training.count_labels(dataset) == {0: 6, 1: 2}
    assert training.count_labels(dataset.repeat(), max_batches=3) == {0: 9, 1: 3}


def test_repeated_dataset_without_steps_is_a_config_error(tmp_path):
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((4, 32, 32, 3), np.float32), np.arange(4) % 2)).batch(2)
    model = mil.build_mil_model(SMALL_MIL)
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        training.train_model(model, dataset.repeat(), dataset, SMALL_MIL,
                             model_config.TrainingConfig(epochs=1), str(tmp_path))


def test_repeated_datasets_with_step_limits_train(tmp_path, caplog):
    images, labels, _ = synthetic_images.bag_dataset(12, grid=2, tile=16, seed=0)
    labels[:] = [0] * 9 + [1] * 3  # imbalanced: class weights 0.67 / 2.0
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4).repeat()
    config = model_config.TrainingConfig(epochs=2, steps_per_epoch=3, validation_steps=2, verbose=0)
    caplog.set_level("INFO", logger="histopath.models.training")
    history = training.train_model(mil.build_mil_model(SMALL_MIL), dataset, dataset, SMALL_MIL, config,
                                   str(tmp_path / "logs"))
    assert history["phase"] == ["train", "train"] and history["epoch"] == [0, 1]
    assert {"loss", "val_loss", "auc", "val_auc", "accuracy", "lr"} <= set(history)
    assert "instance_loss" not in history  # no instance classifier, no such metric
    assert all(len(v) == 2 for v in history.values())
    messages = caplog.text
    assert "loss weights [0.666" in messages and "[train] epoch 2/2" in messages


def test_densenet_with_zero_head_epochs_only_fine_tunes(tmp_path):
    from histopath.models import densenet

    images, labels = synthetic_images.image_dataset(8, 32, seed=1)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    config = model_config.DenseNetConfig(image_size=32, fine_tune_blocks=-1, freeze_batchnorm=False)
    history = training.train_model(densenet.build_densenet_model(config), dataset, dataset, config,
                                   model_config.TrainingConfig(epochs=0, fine_tune_epochs=1, verbose=0),
                                   str(tmp_path / "logs"))
    assert history["phase"] == ["fine_tune"]
    # Phases shorter than early stopping's start epoch compare by their last values; a
    # fine-tuning that makes the model worse (a learning rate far too high) is dropped.
    diverging = model_config.DenseNetConfig(image_size=32, fine_tune_blocks=1, fine_tune_learning_rate=50.0)
    model = densenet.build_densenet_model(diverging)
    history = training.train_model(model, dataset, dataset, diverging,
                                   model_config.TrainingConfig(epochs=1, fine_tune_epochs=1, verbose=0,
                                                               early_stopping_start_epoch=2),
                                   str(tmp_path / "logs-short"))
    assert history["phase"] == ["head", "fine_tune"] and history["kept"] == [1, 0]
    assert model.evaluate(dataset, verbose=0, return_dict=True)["loss"] == pytest.approx(history["val_loss"][0],
                                                                                          rel=1e-4)
    with pytest.raises(ConfigError, match="epochs > 0"):
        training.train_model(model, dataset, dataset, config,
                             model_config.TrainingConfig(epochs=0, fine_tune_epochs=0), str(tmp_path / "l2"))


def test_the_kept_column_is_the_epoch_early_stopping_restored_from_its_start_epoch_on(tmp_path):
    images, labels, _ = synthetic_images.bag_dataset(16, grid=2, tile=16, seed=4)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    config = model_config.TrainingConfig(epochs=5, early_stopping_patience=10, early_stopping_start_epoch=2,
                                         verbose=0)
    model = mil.build_mil_model(SMALL_MIL)
    history = training.train_model(model, dataset, dataset, SMALL_MIL, config, str(tmp_path / "logs"))
    best = 2 + int(np.argmin(history["val_loss"][2:]))  # the epochs before the start are not watched
    assert history["kept"] == [1] * (best + 1) + [0] * (4 - best)
    restored = model.evaluate(dataset, verbose=0, return_dict=True)["loss"]
    assert restored == pytest.approx(history["val_loss"][best], rel=1e-4)
    # A refit keeps every epoch it trains, and its last weights.
    refit = mil.build_mil_model(SMALL_MIL)
    history = training.train_model(refit, dataset, dataset, SMALL_MIL,
                                   model_config.TrainingConfig(epochs=3, keep_best_epoch=False, verbose=0),
                                   str(tmp_path / "refit"))
    assert history["kept"] == [1, 1, 1]
    last = refit.evaluate(dataset, verbose=0, return_dict=True)["loss"]
    assert last == pytest.approx(history["val_loss"][-1], rel=1e-4)


def test_mil_needs_at_least_one_epoch(tmp_path):
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((4, 32, 32, 3), np.float32), np.arange(4) % 2)).batch(2)
    with pytest.raises(ConfigError, match="epochs >= 1"):
        training.train_model(mil.build_mil_model(SMALL_MIL), dataset, dataset, SMALL_MIL,
                             model_config.TrainingConfig(epochs=0), str(tmp_path))


def test_monitoring_val_auc_restores_the_epoch_with_the_best_eval_auc(tmp_path):
    images, labels, _ = synthetic_images.bag_dataset(16, grid=2, tile=16, seed=2)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    config = model_config.TrainingConfig(epochs=3, monitor="val_auc", early_stopping_patience=5, verbose=0)
    model = mil.build_mil_model(SMALL_MIL)
    history = training.train_model(model, dataset, dataset, SMALL_MIL, config, str(tmp_path / "logs"))
    best = max(history["val_auc"])
    restored = model.evaluate(dataset, verbose=0, return_dict=True)
    auc = next(value for name, value in restored.items() if name.endswith("auc"))  # MIL: "probability_auc"
    assert auc == pytest.approx(best, abs=1e-4)
    with pytest.raises(ConfigError, match="monitor"):
        model_config.TrainingConfig(monitor="val_accuracy")


def test_validation_sees_the_averaged_weights_and_training_the_latest():
    import tf_keras as keras

    rng = np.random.default_rng(3)
    features = rng.normal(size=(64, 4)).astype(np.float32)
    targets = (features[:, :1] > 0).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((features, targets)).batch(16)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    training.compile_model(model, 0.1, multi_output=False, weight_averaging=0.9)

    class Recorder(keras.callbacks.Callback):
        """Sees the weights at the end of training steps and (before the swap-back) of epochs."""

        def __init__(self):
            super().__init__()
            self.latest, self.epoch_end, self.averages, self.epoch_begin, self.val_loss = [], [], [], [], []
            self.latest_at_epoch_end = []

        def on_train_batch_end(self, batch, logs=None):
            self.latest = [v.numpy() for v in model.trainable_variables]

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_begin.append([v.numpy() for v in model.trainable_variables])

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_end.append([v.numpy() for v in model.trainable_variables])
            self.averages.append([training.averaged_weight(model.optimizer, v).numpy()
                                  for v in model.trainable_variables])
            self.val_loss.append(logs["val_loss"])
            self.latest_at_epoch_end.append(self.latest)

    recorder = Recorder()
    model.fit(dataset, validation_data=dataset, epochs=2, verbose=0,
              callbacks=[recorder, training._ValidateAveragedWeights()])
    for seen, averaged in zip(recorder.epoch_end[0], recorder.averages[0]):
        np.testing.assert_array_equal(seen, averaged)  # validated: the average
    assert not np.allclose(recorder.epoch_end[0][0], recorder.latest_at_epoch_end[0][0])  # average != latest
    # The next epoch trains on from the latest weights, not from the average.
    for begin, latest in zip(recorder.epoch_begin[1], recorder.latest_at_epoch_end[0]):
        np.testing.assert_array_equal(begin, latest)
    # The logged validation loss is the averaged model's.
    for variable, value in zip(model.trainable_variables, recorder.epoch_end[1]):
        variable.assign(value)
    assert model.evaluate(dataset, verbose=0, return_dict=True)["loss"] == pytest.approx(recorder.val_loss[1], rel=1e-5)
    # fit ends with the average written into the model (Keras's finalize step).
    for variable, averaged in zip(model.trainable_variables, recorder.averages[1]):
        np.testing.assert_allclose(variable.numpy(), averaged, rtol=1e-6)


def test_weight_averaging_restores_the_best_averaged_epoch(tmp_path):
    images, labels, _ = synthetic_images.bag_dataset(16, grid=2, tile=16, seed=2)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    config = model_config.TrainingConfig(epochs=3, monitor="val_loss", early_stopping_patience=5, verbose=0,
                                         weight_averaging=0.8)
    model = mil.build_mil_model(SMALL_MIL)
    history = training.train_model(model, dataset, dataset, SMALL_MIL, config, str(tmp_path / "logs"))
    restored = model.evaluate(dataset, verbose=0, return_dict=True)
    assert restored["loss"] == pytest.approx(min(history["val_loss"]), rel=1e-4)
    with pytest.raises(ConfigError, match="weight_averaging"):
        model_config.TrainingConfig(weight_averaging=1.0)


def test_early_stopping_ignores_the_first_epochs_of_a_phase(tmp_path):
    images, labels, _ = synthetic_images.bag_dataset(16, grid=2, tile=16, seed=2)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    # A learning rate this large makes the first epoch's eval loss the lowest.
    model_options = SMALL_MIL.replace(learning_rate=0.5)
    config = model_config.TrainingConfig(epochs=4, monitor="val_loss", early_stopping_patience=0, verbose=0,
                                         early_stopping_start_epoch=2, seed=3)
    model = mil.build_mil_model(model_options)
    history = training.train_model(model, dataset, dataset, model_options, config, str(tmp_path / "logs"))
    assert len(history["val_loss"]) >= 3, "no stop before the start epoch, patience 0 or not"
    assert min(history["val_loss"][:2]) < min(history["val_loss"][2:]), "the test needs a better early epoch"
    restored = model.evaluate(dataset, verbose=0, return_dict=True)
    assert restored["loss"] == pytest.approx(min(history["val_loss"][2:]), rel=1e-4)
    with pytest.raises(ConfigError, match="early_stopping_start_epoch"):
        model_config.TrainingConfig(early_stopping_start_epoch=-1)
