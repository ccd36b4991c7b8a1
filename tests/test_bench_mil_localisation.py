"""bench/mil_localisation.py, localisation_scoring.py, region_bags.py: patch-level scores of
MIL attention on IDC region bags.

Scoring on tiny synthetic bags with known answers, and one run on real patients:
`ingest --bag-size 2` of 3 symlinked IDC patients, an untrained 2x2-tile MIL model
exported with the project's exporter, then predict / score / slide heat-maps / CLI.
"""

from __future__ import annotations

import json
import os
import re

import histopath  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import pytest
from PIL import Image

from bench import localisation_scoring as scoring
from bench import mil_localisation as ml
from bench import region_bags
from histopath.data import features
from histopath.errors import DataError

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)

IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
PATIENTS = ("8916", "9124", "9022")  # the smallest real slides; all have IDC-positive patches


def _bags(attention, patch_labels, labels, probability, patients):
    return {
        "attention": np.asarray(attention, dtype=np.float64),
        "patch_labels": np.asarray(patch_labels, dtype=np.int64),
        "label": np.asarray(labels, dtype=np.int64),
        "probability": np.asarray(probability, dtype=np.float64),
        "patient_id": np.asarray(patients),
    }


def _toy(invert: bool = False, missing_attention: float = 0.0):
    """3 positive bags and 1 negative bag, 2x2 tiles; attention ranks positives first."""
    m = missing_attention  # attention on a cell without a patch (must not matter)
    attention = np.array([
        [0.6, 0.2, m, 0.2],  # positive bag, patient 1
        [0.1, 0.45, 0.45, m],  # positive bag, patient 2
        [0.97, 0.01, 0.01, 0.01],  # NEGATIVE bag, patient 3: would spoil pooled/within
        [0.3, 0.3, m, m],  # positive bag with positive patches only, patient 3
    ])
    patch_labels = [[1, 0, -1, 0], [0, 1, 1, -1], [0, 0, 0, 0], [1, 1, -1, -1]]
    if invert:
        attention = np.where(np.asarray(patch_labels) == -1, attention, 1.0 - attention)
    return _bags(attention, patch_labels, [1, 1, 0, 1], [0.9, 0.8, 0.05, 0.7], ["1", "2", "3", "3"])


def test_perfect_attention_scores_one_and_excludes_negative_bags_and_empty_cells():
    scores = scoring.localisation_scores(_toy(), bootstrap=200, seed=1)
    assert scores["pooled"]["value"] == 1.0
    assert scores["within_bag"]["value"] == 1.0
    assert scores["whole_slide"]["value"] == 1.0
    # pooled: the 3 positive bags' 8 present tiles (5 positive); the negative bag is out.
    pooled = scores["pooled"]
    assert (pooled["n_bags"], pooled["n_tiles"], pooled["n_positive_tiles"], pooled["n_negative_tiles"],
            pooled["n_patients"]) == (3, 8, 5, 3, 3)
    # within-bag: only the two bags holding both classes.
    within = scores["within_bag"]
    assert (within["n_bags"], within["n_tiles"], within["n_patients"]) == (2, 6, 2)
    assert within["n_positive_bags_without_both_classes"] == 1
    # whole slide: every present tile of all 4 bags.
    whole = scores["whole_slide"]
    assert (whole["n_bags"], whole["n_tiles"], whole["n_patients"]) == (4, 12, 3)
    assert scores["n_bags"] == 4 and scores["n_patients"] == 3
    # Cells without a patch are ignored whatever attention they get.
    loud = scoring.localisation_scores(_toy(missing_attention=5.0), bootstrap=200, seed=1)
    for name in ("pooled", "within_bag", "whole_slide"):
        assert loud[name] == scores[name]


def test_inverted_attention_scores_zero():
    scores = scoring.localisation_scores(_toy(invert=True), bootstrap=0)
    assert scores["pooled"]["value"] == 0.0
    assert scores["within_bag"]["value"] == 0.0
    assert scores["pooled"]["reason"] == "no confidence interval: bootstrap disabled (0 resamples)"
    assert scores["pooled"]["ci_low"] is None


def test_known_values_ties_and_negative_bag_effect():
    # One positive bag with a tie between a positive and a negative tile: AUC (1 + 0.5) / 2.
    bags = _bags([[0.5, 0.5, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0]], [[1, 0, 0, -1], [0, 0, 0, 0]],
                 [1, 0], [0.6, 0.6], ["1", "2"])
    scores = scoring.localisation_scores(bags, bootstrap=0)
    assert scores["pooled"]["value"] == pytest.approx(0.75)
    assert scores["within_bag"]["value"] == pytest.approx(0.75)
    # Whole slide: the negative bag's 0.9*0.6 tile outranks the positive 0.5*0.6 one.
    # positive 0.30 vs negatives 0.30 (tie), 0, 0.54, 0.06, 0, 0 -> (4 + 0.5) / 6.
    assert scores["whole_slide"]["value"] == pytest.approx(4.5 / 6)
    # Only negative bags: pooled and within-bag are undefined, with a reason.
    negative = _bags([[0.5, 0.5]], [[0, 0]], [0], [0.2], ["1"])
    scores = scoring.localisation_scores(negative, bootstrap=10)
    for name in ("pooled", "within_bag", "whole_slide"):
        assert scores[name]["value"] is None and scores[name]["reason"]


def test_bootstrap_interval_contains_the_point_value_and_is_seeded():
    rng = np.random.default_rng(0)
    n_bags, tiles = 120, 9
    patch_labels = rng.choice([-1, 0, 1], size=(n_bags, tiles), p=[0.2, 0.5, 0.3])
    raw = rng.random((n_bags, tiles)) + 0.8 * (patch_labels == 1)
    raw[patch_labels == -1] = 0.0
    attention = raw / raw.sum(axis=1, keepdims=True)
    labels = (patch_labels == 1).any(axis=1).astype(int)
    probability = np.clip(0.3 + 0.4 * labels + 0.2 * rng.random(n_bags), 0, 1)
    patients = np.array([str(100 + i % 12) for i in range(n_bags)])
    bags = _bags(attention, patch_labels, labels, probability, patients)
    scores = scoring.localisation_scores(bags, bootstrap=300, seed=4)
    for name in ("pooled", "within_bag", "whole_slide"):
        entry = scores[name]
        assert 0.5 < entry["value"] <= 1.0, name  # informative attention
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], (name, entry)
        assert entry["ci_low"] < entry["ci_high"]
        assert entry["bootstrap_valid"] == 300 and entry["reason"] is None
        assert entry["n_patients"] == 12
    assert scoring.localisation_scores(bags, bootstrap=300, seed=4) == scores
    assert scoring.localisation_scores(bags, bootstrap=300, seed=5)["pooled"]["ci_low"] != scores["pooled"]["ci_low"]
    with pytest.raises(ValueError, match="inconsistent"):
        scoring.localisation_scores({**bags, "probability": probability[:-1]})


def test_tile_slide_context_averages_over_the_slide_not_the_bag():
    from histopath.evaluation import slide_context

    # Two 2x2 regions side by side on patient "a" (origins 0 and 100 px), one on "b" at the
    # same place as a's first: a's tiles are each other's neighbours across the region
    # border, b's are not, and the cell without a patch takes no part.
    scores = np.array([[0.9, 0.1, 0.8, 0.2], [0.3, 0.4, 0.5, 0.6], [0.0, 1.0, 1.0, 0.0]])
    labels = np.array([[1, 0, 1, -1], [0, 0, 1, 1], [0, 1, 1, 0]])
    smoothed = scoring.tile_slide_context(scores, labels, ["a", "a", "b"], [0, 100, 0], [0, 0, 0], 1.0)
    present = labels != -1
    columns = np.array([[0, 1, 0, 1], [2, 3, 2, 3], [0, 1, 0, 1]])
    rows = np.array([[0, 0, 1, 1]] * 3)
    expected = slide_context.smooth_slide_scores(scores[present], np.repeat(["a", "a", "b"], present.sum(axis=1)),
                                                 columns[present], rows[present], 1.0)
    np.testing.assert_allclose(smoothed[present], expected)
    assert smoothed[0, 3] == 0.0  # no patch there
    # b alone gives the same values: a's tiles never leak into b's slide.
    alone = scoring.tile_slide_context(scores[2:], labels[2:], ["b"], [0], [0], 1.0)
    np.testing.assert_allclose(alone[0], smoothed[2])
    assert not np.allclose(smoothed[0, :3], scoring.tile_slide_context(scores[:1], labels[:1], ["a"], [0], [0], 1.0)[0, :3])
    with pytest.raises(ValueError, match="inconsistent"):
        scoring.tile_slide_context(scores[:, :3], labels[:, :3], ["a", "a", "b"], [0, 100, 0], [0, 0, 0], 1.0)


def test_patches_as_bags_put_each_patch_in_its_region_cell():
    # Patient "7": three patches of region (0, 0) and one of region (1, 0), K = 2; IDC
    # offsets are 1 + 50 n.
    xs, ys = [1, 51, 1, 101], [1, 1, 51, 1]
    bags = region_bags.patches_as_bags([0.9, 0.2, 0.4, 0.7], [1, 0, 0, 0], ["7"] * 4, xs, ys, 2)
    np.testing.assert_allclose(bags["attention"], [[0.9, 0.2, 0.4, 0.0], [0.7, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(bags["patch_labels"], [[1, 0, 0, -1], [0, -1, -1, -1]])
    np.testing.assert_array_equal(bags["label"], [1, 0])
    np.testing.assert_array_equal(bags["origin_x"], [0, 100])
    scores = scoring.localisation_scores(bags, bootstrap=0)
    assert scores["within_bag"]["value"] == 1.0 and scores["within_bag"]["n_tiles"] == 3
    with pytest.raises(ValueError, match="two patches in the cell"):
        region_bags.patches_as_bags([0.1, 0.2], [0, 0], ["7", "7"], [1, 1], [1, 1], 2)


@pytest.fixture(scope="module")
def real_run(shared_data, tmp_path_factory):
    """Region bags (K = 2) of 3 real patients and an untrained 2x2-tile MIL model."""
    import tensorflow as tf

    from histopath.models import image_ops, mil
    from histopath.models.export import export_serving_model
    from histopath.models.config import MilConfig
    from histopath.data.ingest import ingest

    root = tmp_path_factory.mktemp("mil_localisation")
    source = root / "idc"
    source.mkdir()
    for patient in PATIENTS:  # symlinks: the data is read in place, never copied
        os.symlink(shared_data / "idc" / patient, source / patient)
    records = root / "records"
    splits = {"train": 0.2, "test": 0.8}
    manifest = ingest("idc", str(source), str(records), splits=splits, seed=42,
                      bag_size=2, beam_args=IN_MEMORY)

    # What tests/model_exports.py does, at image_size = 2 * 50 and tile_size = 50.
    tf.keras.utils.set_random_seed(3)
    config = MilConfig(image_size=100, tile_size=50, encoder_filters=(4, 8), embedding_units=8, attention_dim=4,
                       instance_loss_weight=0.5)  # with the instance classifier: tile probabilities too
    model_dir = root / "model" / "mil"
    export_serving_model(
        mil.build_mil_model(config), str(model_dir / "1"),
        preprocess=lambda image_bytes: image_ops.decode_and_resize(image_bytes, config.image_size),
        model_info={"model_kind": "mil", "model_name": "mil", "dataset": "test"}, decision_threshold=0.5)
    bags = region_bags.predict_bags(model_dir, records, "test", batch_size=64)
    return {"root": root, "source": source, "records": records, "manifest": manifest,
            "model_dir": model_dir, "bags": bags}


def test_predict_bags_on_real_region_bags(real_run):
    bags, manifest = real_run["bags"], real_run["manifest"]
    test = manifest["splits"]["test"]
    n = test["num_examples"]
    assert n > 0 and len(test["patient_ids"]) >= 1
    for key in ("probability", "predicted_label", "label", "patient_id", "origin_x", "origin_y", "bag_size"):
        assert bags[key].shape == (n,), key
    assert bags["attention"].shape == bags["patch_labels"].shape == bags["tile_probability"].shape == (n, 4)
    assert ((bags["tile_probability"] >= 0) & (bags["tile_probability"] <= 1)).all()
    assert set(bags["patient_id"]) == set(test["patient_ids"])
    assert (bags["bag_size"] == 2).all()
    assert ((bags["probability"] >= 0) & (bags["probability"] <= 1)).all()
    assert np.allclose(bags["attention"].sum(axis=1), 1.0, atol=1e-4)
    assert (bags["origin_x"] % 100 == 0).all() and (bags["origin_y"] % 100 == 0).all()
    assert ((bags["patch_labels"] >= -1) & (bags["patch_labels"] <= 1)).all()
    assert ((bags["patch_labels"] != -1).any(axis=1)).all()  # every bag holds a patch
    assert np.array_equal(bags["label"], (bags["patch_labels"] == 1).any(axis=1).astype(int))
    assert int(bags["label"].sum()) == test["label_counts"]["malignant"]
    # The tissue mask gives empty (white) cells no attention whenever the bag has tissue.
    empty = bags["patch_labels"] == -1
    assert (bags["attention"][empty] <= 1e-6).mean() > 0.9
    assert (bags["tile_probability"][empty] == 0).mean() > 0.9

    # Same answers as the model's `serving_examples` signature on the raw records.
    import tensorflow as tf

    from histopath.models.exported import load as load_model

    shard = real_run["records"] / test["shards"][0]
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(str(shard), compression_type="GZIP").take(8)]
    outputs = load_model(real_run["model_dir"]).examples_fn(examples=tf.constant(serialized))
    assert np.allclose(outputs["probability"].numpy(), bags["probability"][:8], atol=1e-6)
    assert np.allclose(outputs["attention"].numpy(), bags["attention"][:8], atol=1e-6)


def test_scores_and_slide_heatmaps_on_real_bags(real_run, tmp_path):
    bags, records = real_run["bags"], real_run["records"]
    scores = scoring.localisation_scores(bags, bootstrap=100, seed=0)
    for name in ("pooled", "within_bag", "whole_slide"):
        entry = scores[name]
        assert entry["value"] is not None and 0.0 <= entry["value"] <= 1.0, name
        assert entry["n_tiles"] == entry["n_positive_tiles"] + entry["n_negative_tiles"]
    present = bags["patch_labels"] != -1
    assert scores["whole_slide"]["n_tiles"] == int(present.sum())
    assert scores["pooled"]["n_tiles"] == int(present[bags["label"] == 1].sum())
    json.dumps(scores)  # JSON-ready

    patients = sorted(set(bags["patient_id"]), key=lambda p: (len(p), p))
    bags = {**bags, "tile_context": scoring.tile_slide_context(bags["tile_probability"], bags["patch_labels"],
                                                          bags["patient_id"], bags["origin_x"], bags["origin_y"], 1.0)}
    maps = ml.slide_heatmaps(bags, records, "test", tmp_path / "maps",
                             scores=("attention", "tile_probability", "tile_context"))
    written = maps["attention"]
    assert [p.name for p in written] == [f"{p}.localisation.png" for p in patients]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            assert max(image.size) <= ml.HEATMAP_MAX_SIDE and image.width > image.height
    assert not [p for p in os.listdir(tmp_path / "maps") if p.endswith(".tmp")]
    assert len(ml.slide_heatmaps(bags, records, "test", tmp_path / "one", max_patients=1)["attention"]) == 1
    tiles, context = maps["tile_probability"], maps["tile_context"]
    assert [p.name for p in tiles] == [f"{p}.tiles.png" for p in patients]
    assert [p.name for p in context] == [f"{p}.tiles-context.png" for p in patients]
    with Image.open(tiles[0]) as tile_map, Image.open(written[0]) as attention_map, \
            Image.open(context[0]) as context_map:
        assert tile_map.size == attention_map.size == context_map.size
        assert not np.array_equal(np.asarray(tile_map), np.asarray(attention_map))
        assert not np.array_equal(np.asarray(tile_map), np.asarray(context_map))
    with pytest.raises(DataError, match="no 'tile_probability'"):
        ml.slide_heatmaps({k: v for k, v in bags.items() if k != "tile_probability"}, records, "test",
                          tmp_path / "none", scores=("tile_probability",))

    # The re-assembled slide puts every patch file at its slide offset.
    patient = patients[0]
    mosaics = {}
    for batch in region_bags.iter_record_batches(records, "test", 128):
        for image, pid, x, y in zip(batch["image"], batch["patient_id"], batch["origin_x"], batch["origin_y"]):
            if pid == patient:
                mosaics[(int(x), int(y))] = image
    canvas = ml.assemble_slide(mosaics, 2)
    files = sorted((real_run["source"] / patient).glob("*/*.png"))[:25]
    for file in files:
        x, y = map(int, re.search(r"_x(\d+)_y(\d+)_", file.name).groups())
        patch = np.asarray(Image.open(file).convert("RGB"))
        h, w = patch.shape[:2]
        assert np.array_equal(canvas[y - 1:y - 1 + h, x - 1:x - 1 + w], patch), file.name


def test_cli_writes_json_and_heatmaps(real_run, tmp_path, capsys):
    output = tmp_path / "scores.json"
    code = ml.main(["--model", str(real_run["model_dir"]), "--records", str(real_run["records"]),
                    "--heatmaps", str(tmp_path / "maps"), "--max-patients", "1",
                    "--output", str(output), "--bootstrap", "50"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pooled" in printed and "within_bag" in printed and "whole_slide" in printed
    result = json.loads(output.read_text())
    assert result["split"] == "test" and result["bag_size"] == 2
    assert result["bootstrap"]["resamples"] == 50
    assert len(result["heatmaps"]) == 1 and os.path.isfile(result["heatmaps"][0])
    assert result["model"].endswith(os.path.join("mil", "1"))

    assert ml.main(["--model", str(real_run["model_dir"]), "--records", str(real_run["records"]),
                    "--split", "nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err

    # With slide context for the tile probabilities: scored and drawn too.
    code = ml.main(["--model", str(real_run["model_dir"]), "--records", str(real_run["records"]),
                    "--heatmaps", str(tmp_path / "maps"), "--max-patients", "1", "--output", str(output),
                    "--bootstrap", "0", "--tile-context-sigma", "1"])
    assert code == 0 and "tile probabilities with slide context (sigma 1 tiles):" in capsys.readouterr().out
    context = json.loads(output.read_text())["tile_context"]
    bags = real_run["bags"]
    expected = scoring.localisation_scores({**bags, "attention": scoring.tile_slide_context(
        bags["tile_probability"], bags["patch_labels"], bags["patient_id"], bags["origin_x"], bags["origin_y"],
        1.0)}, bootstrap=0)
    assert context["sigma"] == 1.0 and context["within_bag"]["value"] == pytest.approx(expected["within_bag"]["value"])
    assert [os.path.basename(p) for p in context["heatmaps"]] == [
        f"{sorted(set(bags['patient_id']), key=lambda p: (len(p), p))[0]}.tiles-context.png"]
    with pytest.raises(SystemExit):
        ml.main(["--model", str(real_run["model_dir"]), "--records", str(real_run["records"]),
                 "--tile-context-sigma", "0"])
    assert "--tile-context-sigma must be > 0" in capsys.readouterr().err


def test_rejects_patch_records_and_mismatched_models(real_run, tmp_path):
    bad = tmp_path / "patches"
    bad.mkdir()
    manifest = dict(real_run["manifest"], bag_size=None)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="not region bags"):
        region_bags.predict_bags(real_run["model_dir"], bad, "test")
    assert features.BAG_PATCH_LABELS in real_run["manifest"]["features"]

    from model_exports import export_tiny_mil  # tests/: a 64 px model cut into 4x4 tiles

    other = export_tiny_mil(tmp_path / "tiny" / "1")
    with pytest.raises(DataError, match="4x4 grid but the bags are 2x2.*image_size=100, tile_size=50"):
        region_bags.predict_bags(other, real_run["records"], "test")
