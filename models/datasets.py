"""The models' input pipelines: Transform's examples as `tf.data` batches or in memory.

`make_dataset` streams a split for training and evaluation; `load_examples` reads the
train and eval patients into memory for the patient folds (`cross_validation`), and
`array_dataset` / `predict_arrays` batch those arrays the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from histopath.data import features
from histopath.errors import DataError
from histopath.models import image_ops, preprocessing

_PREDICT_BATCH = 32


# Shuffle buffer of the training examples (serialized records; with the in-memory cache
# this many examples are mixed each epoch, so a split of up to this size is fully reshuffled).
SHUFFLE_BUFFER = 16384


def make_dataset(
    file_pattern: list[str],
    tf_transform_output: tft.TFTransformOutput,
    *,
    batch_size: int,
    transform_size: int,
    model_size: int,
    shuffle: bool,
    seed: int,
    cache: bool = True,
    with_slide_positions: bool = False,
    with_patients: bool = False,
) -> tf.data.Dataset:
    """Transformed examples → `(images float32 (b, s, s, 3), labels int64 (b,))`, one pass.

    Transform writes gzip TFRecords of `tf.train.Example`; they are read with plain
    tf.data (parsed with Transform's output feature spec) so that the serialized records
    can be cached in memory: from the second epoch on nothing is read or decompressed,
    and every epoch is reshuffled.

    Args:
      file_pattern: Transform's split file patterns (`fn_args.train_files`, ...).
      tf_transform_output: the Transform component's output.
      batch_size: examples per batch.
      transform_size: the size Transform resized the images to.
      model_size: the model's input size.
      shuffle: reshuffle each epoch (training split).
      seed: shuffle seed.
      cache: keep the serialized records in memory after the first pass (about the size
        of the uncompressed split; turn off for splits that do not fit in memory).
      with_slide_positions: add a third element, `{name: (b,) tensor}` of the
        `preprocessing.SLIDE_POSITION_FEATURES` (DataError when the examples lack them).
      with_patients: add a third element `{features.PATIENT_ID: (b,) tensor}` (with
        `with_slide_positions` the patient is among the positions already).
    """
    files = sorted(path for pattern in file_pattern for path in tf.io.gfile.glob(pattern))
    if not files:
        raise DataError(f"no transformed examples match {file_pattern}")
    all_features = tf_transform_output.transformed_feature_spec()
    missing = [name for name in preprocessing.SLIDE_POSITION_FEATURES if name not in all_features]
    if with_slide_positions and missing:
        raise DataError(f"slide context needs the slide positions {', '.join(missing)} in the examples "
                        "(IDC patch records have them)")
    # Only what is used is parsed (training batches need no patient ids or positions).
    extra = preprocessing.SLIDE_POSITION_FEATURES if with_slide_positions else (
        (features.PATIENT_ID,) if with_patients else ())
    used = (preprocessing.TRANSFORMED_IMAGE, preprocessing.TRANSFORMED_LABEL) + extra
    feature_spec = {name: all_features[name] for name in used}
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE)
    if cache:
        dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)

    def to_model_input(serialized: tf.Tensor) -> tuple:
        batch = tf.io.parse_example(serialized, feature_spec)
        images = preprocessing.transformed_to_model_input(
            batch[preprocessing.TRANSFORMED_IMAGE], transform_size, model_size
        )
        labels = tf.reshape(batch[preprocessing.TRANSFORMED_LABEL], [-1])
        if extra:
            return images, labels, {name: tf.reshape(batch[name], [-1]) for name in extra}
        return images, labels

    return dataset.batch(batch_size).map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


@dataclasses.dataclass(frozen=True)
class PatientExamples:
    """Transformed examples in memory: uint8 images at the Transform size, labels, patients."""

    images: np.ndarray
    labels: np.ndarray
    patients: np.ndarray

    @classmethod
    def join(cls, first: "PatientExamples", second: "PatientExamples") -> "PatientExamples":
        """The examples of both, `first`'s first."""
        return cls(*(np.concatenate([a, b]) for a, b in zip(
            (first.images, first.labels, first.patients), (second.images, second.labels, second.patients))))


def load_examples(files: Sequence[str], tf_transform_output: tft.TFTransformOutput,
                  transform_size: int) -> PatientExamples:
    """Reads Transform's examples (`fn_args.train_files` + `eval_files`) into memory.

    Raises:
      DataError: no examples, or examples without patient ids.
    """
    paths = sorted(path for pattern in files for path in tf.io.gfile.glob(pattern))
    spec = tf_transform_output.transformed_feature_spec()
    if features.PATIENT_ID not in spec:
        raise DataError("cross-validation needs the patient id in the transformed examples")
    used = {name: spec[name] for name in (preprocessing.TRANSFORMED_IMAGE, preprocessing.TRANSFORMED_LABEL,
                                          features.PATIENT_ID)}
    images, labels, patients = [], [], []
    for serialized in tf.data.TFRecordDataset(paths, compression_type="GZIP").batch(256):
        batch = tf.io.parse_example(serialized, used)
        floats = image_ops.dequantize_from_bytes(batch[preprocessing.TRANSFORMED_IMAGE], transform_size)
        images.append(np.round(floats.numpy() * 255.0).astype(np.uint8))
        labels.append(tf.reshape(batch[preprocessing.TRANSFORMED_LABEL], [-1]).numpy())
        patients += [p.decode() for p in tf.reshape(batch[features.PATIENT_ID], [-1]).numpy()]
    if not images:
        raise DataError(f"no examples in {list(files)}")
    return PatientExamples(np.concatenate(images), np.concatenate(labels).astype(np.int64), np.array(patients))


def array_dataset(images: np.ndarray, labels: np.ndarray, model_size: int, batch_size: int,
                  shuffle: bool, seed: int) -> tf.data.Dataset:
    """`(float images at the model's size, labels)` batches, as the Trainer's input."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    resize = model_size != images.shape[1]

    def to_model_input(batch_images, batch_labels):
        floats = tf.cast(batch_images, tf.float32) / 255.0
        return (image_ops.resize_and_scale(floats, model_size) if resize else floats), batch_labels

    return dataset.batch(batch_size).map(to_model_input).prefetch(tf.data.AUTOTUNE)


def predict_arrays(predictor: Callable, images: np.ndarray, model_size: int) -> np.ndarray:
    """Probabilities of `images` (uint8 at the Transform size) from an exported-style predictor."""
    scores = [predictor(batch)["probability"].numpy().reshape(-1)
              for batch, _ in array_dataset(images, np.zeros(len(images), np.int64), model_size,
                                            _PREDICT_BATCH, False, 0)]
    return np.concatenate(scores) if scores else np.zeros(0)


