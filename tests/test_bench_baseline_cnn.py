"""The plain-CNN baseline (bench/baseline_cnn.py): model shapes, the time budget, the
threshold chosen on eval, the saved result, and clear errors for bad records folders."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import histopath  # noqa: F401  (before TensorFlow)
import numpy as np
import pytest
import tf_keras as keras

from bench import baseline_cnn
from bench.baseline_cnn import BaselineConfig, build_plain_cnn, load_split, train_and_predict
from histopath.evaluation.operating_point import balanced_accuracy_threshold
from histopath.errors import ConfigError, DataError

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)

IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
# Three small IDC patients, each with both classes: one per split.
PATIENTS = ("8916", "9022", "9124")
FILES_PER_CLASS = 24
TINY = BaselineConfig(conv_layers=6, base_filters=8, image_size=32, batch_size=16, minutes=0.0, seed=3)


@pytest.fixture(scope="module")
def records(shared_data, tmp_path_factory):
    """A tiny records folder ingested for real from symlinks to a few IDC patches."""
    from histopath.data.ingest import ingest

    root = tmp_path_factory.mktemp("baseline")
    source = root / "idc"
    for patient in PATIENTS:
        for label in ("0", "1"):
            folder = shared_data / "idc" / patient / label
            (source / patient / label).mkdir(parents=True)
            for name in sorted(os.listdir(folder))[:FILES_PER_CLASS]:
                os.symlink(folder / name, source / patient / label / name)
    output = root / "records"
    ingest("idc", str(source), str(output), seed=42, beam_args=IN_MEMORY)
    return output


@pytest.fixture(scope="module")
def trained(records, tmp_path_factory):
    """One training run (budget 0: one batch), recording what the threshold was chosen on."""
    calls = []

    def spy(labels, scores):
        calls.append((np.asarray(labels).copy(), np.asarray(scores).copy()))
        return balanced_accuracy_threshold(labels, scores)

    output = tmp_path_factory.mktemp("baseline_out")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(baseline_cnn, "balanced_accuracy_threshold", spy)
        result = train_and_predict(records, TINY, output_dir=output)
    return result, calls, output


@pytest.mark.parametrize("conv_layers, pools", [(6, 3), (8, 4)])
def test_plain_cnn_shapes_and_range(conv_layers, pools):
    config = BaselineConfig(conv_layers=conv_layers, base_filters=8, image_size=50)
    model = build_plain_cnn(config)
    images = np.random.default_rng(0).random((3, 50, 50, 3), dtype=np.float32)
    scores = model(images, training=False).numpy()
    assert model.input_shape == (None, 50, 50, 3)
    assert scores.shape == (3, 1)
    assert np.all((scores >= 0) & (scores <= 1))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == conv_layers
    assert [c.filters for c in convs] == [min(8 * 2 ** (i // 2), 256) for i in range(conv_layers)]
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers) == pools


def test_filters_are_capped_and_pooling_stops_at_one_pixel():
    model = build_plain_cnn(BaselineConfig(conv_layers=10, base_filters=64, image_size=8))
    assert max(layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)) == 256
    assert model(np.zeros((2, 8, 8, 3), np.float32)).shape == (2, 1)


def test_invalid_config_is_refused():
    with pytest.raises(ConfigError, match="conv_layers"):
        BaselineConfig(conv_layers=0)


def test_time_budget_stops_at_the_end_of_the_batch_that_passes_it():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("sgd", "binary_crossentropy")
    budget = baseline_cnn._TimeBudget(0.3, train_size=400, batch_size=4)
    slow = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: time.sleep(0.05))
    started = time.monotonic()
    history = model.fit(np.zeros((400, 4)), np.zeros(400), batch_size=4, epochs=50,
                        callbacks=[slow, budget], verbose=0)
    assert time.monotonic() - started < 5
    assert budget.exhausted
    assert len(history.history["loss"]) == 1
    assert 4 <= budget.images_seen < 400  # a few batches of the first epoch, then stop


def test_missing_manifest_is_a_data_error_naming_the_folder(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        load_split(tmp_path, "train", 32)
    with pytest.raises(DataError, match=str(tmp_path)):
        train_and_predict(tmp_path, TINY)


def test_missing_or_empty_split_is_a_data_error(tmp_path):
    manifest = {"splits": {"train": {"num_examples": 0, "shards": []}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="'train' is empty"):
        load_split(tmp_path, "train", 32)
    with pytest.raises(DataError, match="no split 'test'"):
        load_split(tmp_path, "test", 32)


def test_load_split_decodes_the_records(records):
    images, labels, patients = load_split(records, "test", 40)
    manifest = json.loads((records / "manifest.json").read_text())
    assert images.shape == (manifest["splits"]["test"]["num_examples"], 40, 40, 3)
    assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1
    assert set(labels) == {0, 1}
    assert sorted(set(patients)) == manifest["splits"]["test"]["patient_ids"]


def test_load_positions_follow_the_record_order(records):
    import tensorflow as tf

    from histopath.data import layouts
    from histopath.data.manifest import load_manifest, split_shard_paths

    xs, ys = baseline_cnn.load_positions(records, "test")
    shards = split_shard_paths(load_manifest(str(records)), str(records), "test")
    paths = [tf.train.Example.FromString(raw).features.feature["source_path"].bytes_list.value[0].decode()
             for raw in tf.data.TFRecordDataset(shards, compression_type="GZIP").as_numpy_iterator()]
    assert [(x, y) for x, y in zip(xs.tolist(), ys.tolist())] == \
        [layouts.idc_patch_position(path)[1:] for path in paths]


def test_slide_context_scores_the_saved_model_with_an_eval_threshold(trained, records):
    from histopath.evaluation import slide_context
    from histopath.evaluation.metrics import roc_auc

    _, _, output = trained
    result = baseline_cnn.slide_context_predictions(output, records, TINY, 1.5)
    model = keras.models.load_model(output / baseline_cnn.MODEL_NAME, compile=False)
    smoothed = {}
    for split in ("eval", "test"):
        images, labels, patients = load_split(records, split, TINY.image_size)
        xs, ys = baseline_cnn.load_positions(records, split)
        scores = model.predict(images, verbose=0).reshape(-1)
        smoothed[split] = labels, slide_context.smooth_slide_scores(scores, patients, xs, ys, 1.5, 50)
    assert (result["sigma"], result["grid_step"]) == (1.5, 50)
    assert result["threshold"] == pytest.approx(balanced_accuracy_threshold(*smoothed["eval"]))
    assert result["eval_auc"] == pytest.approx(roc_auc(*smoothed["eval"]))
    np.testing.assert_allclose(result["test"]["scores"], smoothed["test"][1], rtol=1e-5)
    assert result["test"]["predictions"] == [int(v >= result["threshold"]) for v in result["test"]["scores"]]


def test_load_split_stain_normalises_like_the_pipeline_transform(records):
    from histopath.models import image_ops

    plain, labels, patients = load_split(records, "test", 40)
    normalized, same_labels, same_patients = load_split(records, "test", 40, stain_normalization=True)
    np.testing.assert_array_equal(labels, same_labels)
    assert patients == same_patients
    np.testing.assert_allclose(normalized, image_ops.normalize_stain(plain).numpy(), atol=1e-5)
    assert np.abs(normalized - plain).mean() > 0.005


def test_budget_stops_training_after_the_first_batch(trained):
    result, _, _ = trained
    assert result["time_budget_reached"]
    assert result["epochs"] == 1  # max_epochs is 100
    assert result["images_seen"] == TINY.batch_size < result["train_images"]
    assert set(result["history"]) >= {"loss", "val_loss", "val_auc", "lr"}


def test_threshold_is_chosen_on_eval_not_test(trained, records):
    result, calls, _ = trained
    _, eval_labels, _ = load_split(records, "eval", TINY.image_size)
    assert len(calls) == 1
    labels, scores = calls[0]
    np.testing.assert_array_equal(labels, eval_labels)
    assert len(scores) == len(eval_labels)  # eval scores, not test scores
    assert result["threshold"] == balanced_accuracy_threshold(labels, scores)
    test_scores = np.array(result["test"]["scores"])
    assert result["test"]["predictions"] == [int(s >= result["threshold"]) for s in test_scores]


def test_result_is_json_and_saved_with_the_model(trained, records):
    result, _, output = trained
    assert json.loads(json.dumps(result)) == result
    assert json.loads((output / "baseline.json").read_text()) == result
    assert sorted(os.listdir(output)) == ["baseline.h5", "baseline.json"]  # no temp files left
    _, test_labels, test_patients = load_split(records, "test", TINY.image_size)
    assert result["test"]["labels"] == test_labels.tolist()
    assert result["test"]["patient_ids"] == test_patients
    assert result["config"] == dataclasses.asdict(TINY)
    images, _, _ = load_split(records, "test", TINY.image_size)
    model = keras.models.load_model(output / "baseline.h5")
    np.testing.assert_allclose(model.predict(images, verbose=0).ravel(), result["test"]["scores"], atol=1e-5)


def test_cli_prints_the_test_auc(records, capsys):
    code = baseline_cnn.main(["--records", str(records), "--conv-layers", "6", "--image-size", "32",
                              "--minutes", "0", "--quiet"])
    assert code == 0
    assert "test AUC" in capsys.readouterr().out


def test_cli_reports_a_missing_manifest(tmp_path, capsys):
    assert baseline_cnn.main(["--records", str(tmp_path), "--minutes", "0"]) == 1
    assert str(tmp_path) in capsys.readouterr().err
