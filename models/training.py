"""The training loop every model kind shares (`models.fit` calls it).

`train_model` fits a model of any registered kind (`models.registry`) through the phases
its module gives (`training_phases`: DenseNet201's head then fine-tuning, one phase for
the MIL and the CNN), with training-set-only augmentation, class weights,
ReduceLROnPlateau and EarlyStopping (best weights restored) on the monitored value, and
TensorBoard logs.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from histopath.models import augment, distribute, registry
from histopath.models.keras_utils import skip_autograph_for_tf_keras
from histopath.models.config import TrainingConfig
from histopath.errors import ConfigError, DataError

skip_autograph_for_tf_keras()

logger = logging.getLogger(__name__)

PROBABILITY = "probability"


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stretch of training at one learning rate (a kind's `training_phases`).

    Attributes:
      name: recorded in the history ("head", "fine_tune", "train").
      learning_rate: Adam's starting rate (ReduceLROnPlateau lowers it).
      epochs: at most this many (early stopping may end it sooner).
      prepare: changes the model before the phase (e.g. unfreezes layers); None = none.
      keep_only_if_better: restore the weights from before the phase unless it improved
        the monitored value over the phases before it.
    """

    name: str
    learning_rate: float
    epochs: int
    prepare: Optional[Callable[[keras.Model], None]] = None
    keep_only_if_better: bool = False


def one_phase(model: str, learning_rate: float, training: TrainingConfig) -> List[Phase]:
    """The schedule of a model trained in one phase ("train", `training.epochs`).

    Raises:
      ConfigError: `training.epochs` is 0 (naming `model`).
    """
    if training.epochs == 0:
        raise ConfigError(f"{model} training needs epochs >= 1")
    return [Phase("train", learning_rate, training.epochs)]


def train_model(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    eval_ds: tf.data.Dataset,
    model_config: Any,
    training_config: TrainingConfig,
    log_dir: str,
    *,
    class_counts: Optional[Mapping[int, int]] = None,
) -> Dict[str, list]:
    """Fits `model` in place and returns its per-epoch history.

    Args:
      model: built by `build_densenet_model` or `build_mil_model` (uncompiled is fine).
      train_ds: batched `(images float32 (B, S, S, 3) in [0, 1], labels (B,) 0/1)`;
        finite (one epoch = one pass) or repeated (then `steps_per_epoch` is required).
      eval_ds: same structure, never augmented; finite or repeated (then
        `validation_steps` is required).
      model_config: the config the model was built from (its kind gives the phases).
      training_config: epochs, callbacks, augmentation, class weights, seed, steps.
      log_dir: TensorBoard log folder (created).
      class_counts: optional `{0: n_benign, 1: n_malignant}` of the training set (e.g.
        from statistics); counted from `train_ds` when omitted and class weights are on.

    Returns:
      `{"phase": [...], "epoch": [...], "loss": [...], "val_loss": [...],
      "accuracy", "auc", "val_accuracy", "val_auc", "lr": [...], "epoch_seconds": [...],
      "train_examples": [...]}`, one entry per epoch run, phases "head"/"fine_tune"
      (DenseNet) or "train" (MIL). `epoch_seconds` is the wall time of the epoch's
      training pass (validation excluded; the first epoch of a phase includes tracing),
      `train_examples` the training examples it saw (see `_EpochTimer`).

    Raises:
      ConfigError: repeated dataset without a steps limit, or unknown config type.
      DataError: the training dataset is empty.
    """
    config = training_config
    keras.utils.set_random_seed(config.seed)
    _check_finite(train_ds, config.steps_per_epoch, "training", "steps_per_epoch")
    _check_finite(eval_ds, config.validation_steps, "evaluation", "validation_steps")
    multi_output = isinstance(model.output, dict)
    train, evaluation, steps_per_epoch, examples_per_epoch = _model_inputs(
        train_ds, eval_ds, config, class_counts, multi_output)
    os.makedirs(log_dir, exist_ok=True)
    fit = _PhaseRunner(model, config, multi_output, train, evaluation, steps_per_epoch, examples_per_epoch,
                       keras.callbacks.TensorBoard(log_dir=log_dir, histogram_freq=0, write_graph=False,
                                                   profile_batch=0))
    best: Optional[float] = None  # the best monitored value so far, and the weights that reached it
    for phase in registry.kind_of(model_config).module().training_phases(model_config, config):
        if phase.prepare is not None:
            phase.prepare(model)
        revertible = phase.keep_only_if_better and best is not None and config.keep_best_epoch
        weights_before = model.get_weights() if revertible else None
        reached = fit.run(phase)
        improved = best is None or (reached < best if fit.mode == "min" else reached > best)
        if weights_before is not None and not improved:
            logger.info("phase %s did not improve %s (%.4f vs %.4f): keeping the earlier weights",
                        phase.name, config.monitor, reached, best)
            model.set_weights(weights_before)
            fit.history.drop_last_phase()
        elif improved:
            best = reached
    return fit.history.as_dict()


def _model_inputs(train_ds: tf.data.Dataset, eval_ds: tf.data.Dataset, config: TrainingConfig,
                  class_counts: Optional[Mapping[int, int]], multi_output: bool) -> tuple:
    """The training batches (class-weighted, augmented, repeated) and the eval batches as
    the model takes them, the steps of one epoch and the examples one epoch sees.

    Raises:
      DataError: the training dataset is empty.
    """
    counts = dict(class_counts) if class_counts is not None else None
    steps_per_epoch = config.steps_per_epoch
    if steps_per_epoch is None:
        # A finite dataset is repeated with one pass as an epoch: a single iterator then
        # serves the whole fit, so the input pipeline (cache, shuffle, parallel maps,
        # prefetch) keeps running across epoch boundaries instead of restarting each epoch.
        counted, steps_per_epoch = count_labels_and_batches(train_ds)
        counts = counts if counts is not None else counted
        if not steps_per_epoch:
            raise DataError("the training dataset is empty")
        train_ds = train_ds.repeat()
    elif counts is None:
        counts = count_labels(train_ds, steps_per_epoch)
    weights = None
    if config.class_weights:
        weights = class_weights_from_counts(counts)
        logger.info("class counts %s -> loss weights %s", counts, weights)
    train = augment.augment_dataset(prepare_dataset(train_ds, weights, multi_output), config.augment, config.seed)
    evaluation = prepare_dataset(eval_ds, None, multi_output)
    examples_per_epoch = int(counts.get(0, 0)) + int(counts.get(1, 0))
    train, evaluation = train.prefetch(tf.data.AUTOTUNE), evaluation.prefetch(tf.data.AUTOTUNE)
    if tf.distribute.has_strategy():  # under multi-worker training (`distribute`)
        train, evaluation = distribute.shard_by_data(train), distribute.shard_by_data(evaluation)
    return train, evaluation, steps_per_epoch, examples_per_epoch


class _PhaseRunner:
    """Fits one model phase after phase on the same inputs, into one history."""

    def __init__(self, model: keras.Model, config: TrainingConfig, multi_output: bool, train: tf.data.Dataset,
                 evaluation: tf.data.Dataset, steps_per_epoch: int, examples_per_epoch: int,
                 tensorboard: keras.callbacks.Callback) -> None:
        self.model, self.config, self.multi_output = model, config, multi_output
        self.train, self.evaluation = train, evaluation
        self.steps_per_epoch, self.examples_per_epoch = steps_per_epoch, examples_per_epoch
        self.tensorboard = tensorboard
        self.mode = "min" if config.monitor == "val_loss" else "max"
        # Keras names a multi-output model's metrics after the output: "val_probability_auc".
        self.monitor = (config.monitor.replace("val_", f"val_{PROBABILITY}_")
                        if multi_output and self.mode == "max" else config.monitor)
        self.history = _History()

    def run(self, phase: Phase) -> float:
        """Fits `phase`; returns the best monitored value it reached."""
        config, model = self.config, self.model
        compile_model(model, phase.learning_rate, self.multi_output, config.weight_averaging)
        start = len(self.history.rows["epoch"])
        early_stopping = keras.callbacks.EarlyStopping(
            monitor=self.monitor, mode=self.mode, patience=config.early_stopping_patience,
            restore_best_weights=True, start_from_epoch=start + config.early_stopping_start_epoch)
        timer = _EpochTimer(self.examples_per_epoch)
        callbacks = [
            keras.callbacks.ReduceLROnPlateau(
                monitor=self.monitor, mode=self.mode, factor=config.reduce_lr_factor,
                patience=config.reduce_lr_patience, min_lr=config.min_learning_rate),
            *([early_stopping] if config.keep_best_epoch else []),
            self.tensorboard, _EpochLogger(phase.name, start + phase.epochs), timer,
        ]
        if config.weight_averaging is not None:
            # Last: the callbacks above see the averaged weights at the end of an epoch.
            callbacks.append(_ValidateAveragedWeights())
        logger.info("phase %s: %d epochs at learning rate %g, %d trainable weight tensors",
                    phase.name, phase.epochs, phase.learning_rate, len(model.trainable_weights))
        fit = model.fit(
            self.train, validation_data=self.evaluation, epochs=start + phase.epochs, initial_epoch=start,
            steps_per_epoch=self.steps_per_epoch, validation_steps=config.validation_steps,
            callbacks=callbacks, verbose=config.verbose,
        )
        self.history.add(phase.name, fit)
        self.history.extend(timer.rows())
        # Keras restores the best epoch it watched (from `start_from_epoch` on); an epoch is
        # kept when its training is in the weights the phase ends with.
        watched = config.keep_best_epoch and early_stopping.best_weights is not None
        kept = early_stopping.best_epoch - start + 1 if watched else len(fit.epoch)
        self.history.extend({"kept": [1] * kept + [0] * (len(fit.epoch) - kept)})
        if watched and np.isfinite(early_stopping.best):
            return float(early_stopping.best)
        # The phase ended before early stopping started watching: its last value.
        return float(fit.history[self.monitor][-1])


def class_weights_from_counts(counts: Mapping[int, int]) -> Optional[List[float]]:
    """Balanced class weights `n / (2 n_c)` for labels 0 and 1.

    Args:
      counts: `{label: number of training examples}`.

    Returns:
      `[w0, w1]`, or None (no weighting) when a class is absent.
    """
    n0, n1 = int(counts.get(0, 0)), int(counts.get(1, 0))
    if n0 + n1 == 0:
        raise DataError("the training dataset is empty")
    if n0 == 0 or n1 == 0:
        logger.warning("training labels hold a single class (%s): no class weighting", dict(counts))
        return None
    total = n0 + n1
    return [total / (2.0 * n0), total / (2.0 * n1)]


def count_labels(dataset: tf.data.Dataset, max_batches: Optional[int] = None) -> Dict[int, int]:
    """Counts the 0/1 labels of a batched `(images, labels)` dataset.

    Args:
      dataset: finite, or repeated with `max_batches` given.
      max_batches: read at most this many batches.
    """
    return count_labels_and_batches(dataset, max_batches)[0]


def count_labels_and_batches(
    dataset: tf.data.Dataset, max_batches: Optional[int] = None
) -> tuple[Dict[int, int], int]:
    """`count_labels`, and the number of batches read."""
    labels = dataset.map(lambda images, labels, *rest: tf.reshape(tf.cast(labels, tf.int64), [-1]))
    if max_batches is not None:
        labels = labels.take(max_batches)
    counts, batches = collections.Counter(), 0
    for batch in labels.as_numpy_iterator():
        counts.update(int(v) for v in batch)
        batches += 1
    return {0: counts.get(0, 0), 1: counts.get(1, 0)}, batches


def _check_finite(dataset: tf.data.Dataset, steps: Optional[int], what: str, option: str) -> None:
    if steps is None and dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ConfigError(f"the {what} dataset repeats forever: set TrainingConfig.{option}")


def prepare_dataset(dataset: tf.data.Dataset, weights: Optional[Sequence[float]], multi_output: bool) -> tf.data.Dataset:
    """(images, labels) -> (images, targets[, sample weights]) with float32 (B, 1) targets."""
    weight_table = None if weights is None else tf.constant(weights, tf.float32)

    def convert(images, labels, *unused):
        targets = tf.reshape(tf.cast(labels, tf.float32), [-1, 1])
        images = tf.cast(images, tf.float32)
        if multi_output:
            targets = {PROBABILITY: targets}
        if weight_table is None:
            return images, targets
        sample_weights = tf.gather(weight_table, tf.reshape(tf.cast(labels, tf.int32), [-1]))
        if multi_output:
            sample_weights = {PROBABILITY: sample_weights}
        return images, targets, sample_weights

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def compile_model(model: keras.Model, learning_rate: float, multi_output: bool,
             weight_averaging: Optional[float] = None) -> None:
    """Compiles with Adam, binary cross-entropy, accuracy and AUC.

    Args:
      weight_averaging: momentum of an exponential moving average of the weights kept by
        the optimizer (`TrainingConfig.weight_averaging`); None keeps no average.
    """
    metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    loss = keras.losses.BinaryCrossentropy()
    if multi_output:
        loss, metrics = {PROBABILITY: loss}, {PROBABILITY: metrics}
    optimizer = keras.optimizers.Adam(
        learning_rate, use_ema=weight_averaging is not None, ema_momentum=weight_averaging or 0.99)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


class _History:
    """Accumulates Keras `History` objects of successive phases into flat lists."""

    def __init__(self):
        self.rows: Dict[str, list] = collections.defaultdict(list)

    def add(self, phase: str, fit: keras.callbacks.History) -> None:
        for epoch_index, epoch in enumerate(fit.epoch):
            self.rows["phase"].append(phase)
            self.rows["epoch"].append(int(epoch))
            for key, values in fit.history.items():
                name = key.replace(f"{PROBABILITY}_", "")
                if name in ("loss", "val_loss") and key != name:
                    continue  # the per-output loss duplicates the total loss
                self.rows[name].append(float(values[epoch_index]))

    def extend(self, rows: Mapping[str, list]) -> None:
        """Appends extra per-epoch columns (e.g. `_EpochTimer.rows()`)."""
        for name, values in rows.items():
            self.rows[name].extend(values)

    def drop_last_phase(self) -> None:
        """Marks the last phase's epochs as not kept (its weights were discarded)."""
        last = self.rows["phase"][-1]
        for index in range(len(self.rows["phase"]) - 1, -1, -1):
            if self.rows["phase"][index] != last:
                break
            self.rows["kept"][index] = 0

    def as_dict(self) -> Dict[str, list]:
        return dict(self.rows)


class _EpochLogger(keras.callbacks.Callback):
    """Logs one line per epoch: phase, epoch, metrics and learning rate."""

    def __init__(self, phase: str, last_epoch: int):
        super().__init__()
        self.phase = phase
        self.last_epoch = last_epoch

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        metrics = " ".join(f"{k.replace(PROBABILITY + '_', '')}={float(v):.4f}"
                           for k, v in sorted(logs.items()) if k != "lr" and np.ndim(v) == 0)
        lr = float(keras.backend.get_value(self.model.optimizer.learning_rate))
        logger.info("[%s] epoch %d/%d %s lr=%.2e", self.phase, epoch + 1, self.last_epoch, metrics, lr)


def averaged_weight(optimizer: keras.optimizers.Optimizer, variable: tf.Variable) -> tf.Variable:
    """The optimizer's moving average of `variable` (an optimizer built with `use_ema`).

    tf_keras 2.16 keeps the averages in a private list indexed like its variables; this is
    the one place that reads it.
    """
    index = optimizer._index_dict[optimizer._var_key(variable)]  # pylint: disable=protected-access
    return optimizer._model_variables_moving_average[index]  # pylint: disable=protected-access


class _ValidateAveragedWeights(keras.callbacks.Callback):
    """Validates the moving average of the weights instead of the latest weights.

    The optimizer keeps the average (`use_ema`) and Keras writes it into the model when
    `fit` ends. This callback also puts it in place from the start of each epoch's
    validation until the end of the epoch, then restores the latest weights for training.
    Placed last, it lets every other callback's `on_epoch_end` see the averaged model:
    the monitored metric, ReduceLROnPlateau and EarlyStopping's best weights (restored at
    the end of `fit`) all describe it.
    """

    def __init__(self):
        super().__init__()
        self._latest: Optional[List[np.ndarray]] = None

    def on_test_begin(self, logs=None):
        optimizer = self.model.optimizer
        if self._latest is not None or not getattr(optimizer, "_model_variables_moving_average", None):
            return  # already swapped, or no step taken yet (the averages do not exist)
        variables = self.model.trainable_variables
        self._latest = [variable.numpy() for variable in variables]
        for variable in variables:
            variable.assign(averaged_weight(optimizer, variable))

    def on_epoch_end(self, epoch, logs=None):
        if self._latest is not None:
            for variable, value in zip(self.model.trainable_variables, self._latest):
                variable.assign(value)
            self._latest = None


class _EpochTimer(keras.callbacks.Callback):
    """Records each epoch's training-pass wall time and the examples it saw.

    The time runs from the start of the epoch to the start of its validation (or to the
    epoch's end without validation data), so validation is excluded; the first epoch of
    a `fit` also includes tf.function tracing. No per-batch hooks, so Keras does not
    have to synchronise after every step.

    Args:
      examples_per_epoch: training examples in one full epoch (one pass over a finite
        dataset, or `steps_per_epoch` batches of a repeated one).
    """

    def __init__(self, examples_per_epoch: int):
        super().__init__()
        self.examples_per_epoch = int(examples_per_epoch)
        self.epoch_seconds: List[float] = []
        self.train_examples: List[int] = []
        self._epoch_start: Optional[float] = None
        self._train_end: Optional[float] = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start, self._train_end = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self._epoch_start is not None and self._train_end is None:
            self._train_end = time.perf_counter()  # fit's validation starts: training pass done

    def on_epoch_end(self, epoch, logs=None):
        end = self._train_end if self._train_end is not None else time.perf_counter()
        self.epoch_seconds.append(round(end - self._epoch_start, 4))
        self.train_examples.append(self.examples_per_epoch)
        self._epoch_start = None

    def rows(self) -> Dict[str, list]:
        """`{"epoch_seconds": [...], "train_examples": [...]}`, one entry per epoch."""
        return {"epoch_seconds": list(self.epoch_seconds), "train_examples": list(self.train_examples)}
