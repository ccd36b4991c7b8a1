"""bench/patient_cv.py: patient folds, and a tiny real cross-validation run.

The run ingests four real IDC patients (symlinked patches) as patches and as 2x2
region bags, then runs one patch recipe and one MIL recipe for one epoch each: every
held-out patient is scored by a model that never trained on it, and the test split is
never read.
"""

from __future__ import annotations

import json
import os

import histopath  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import pytest

from bench import patient_cv
from histopath.errors import ConfigError

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)

IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
PATIENTS = ("8916", "9022", "9124", "8951")  # small slides (171-613 patches), both classes each


def test_patient_folds_are_disjoint_cover_everyone_and_sort_ids_numerically():
    patients = ["10", "9", "9", "8", "11", "12", "8"]
    folds = patient_cv.patient_folds(patients, 2)
    assert folds == [["8", "10", "12"], ["9", "11"]]
    assert sorted(sum(folds, []), key=int) == ["8", "9", "10", "11", "12"]
    with pytest.raises(ConfigError, match="folds"):
        patient_cv.patient_folds(["1", "2"], 3)


def test_code_fingerprint_follows_the_fold_code(monkeypatch):
    first = patient_cv.code_fingerprint()
    assert first == patient_cv.code_fingerprint() and len(first) == 16
    monkeypatch.setattr(patient_cv, "FOLD_MODULES", patient_cv.FOLD_MODULES[:-1])
    assert patient_cv.code_fingerprint() != first


def test_bag_tiles_are_row_major_per_bag():
    mosaics = np.zeros((2, 4, 4, 3), np.uint8)
    for bag in range(2):
        for row in range(2):
            for col in range(2):
                mosaics[bag, row * 2:(row + 1) * 2, col * 2:(col + 1) * 2] = 10 * bag + 2 * row + col
    tiles = patient_cv._bag_tiles(mosaics, 2)
    assert tiles.shape == (8, 2, 2, 3)
    assert [int(t[0, 0, 0]) for t in tiles] == [0, 1, 2, 3, 10, 11, 12, 13]


@pytest.fixture(scope="module")
def ingested(shared_data, tmp_path_factory):
    from histopath.data.ingest import ingest

    root = tmp_path_factory.mktemp("patient_cv")
    source = root / "idc"
    source.mkdir()
    for patient in PATIENTS:  # whole slides, so that regions hold neighbouring patches
        os.symlink(shared_data / "idc" / patient, source / patient)
    splits = {"train": 0.5, "eval": 0.25, "test": 0.25}
    seed = 42
    ingest("idc", str(source), str(root / "patches"), splits=splits, seed=seed, beam_args=IN_MEMORY)
    ingest("idc", str(source), str(root / "bags"), splits=splits, seed=seed, bag_size=2, beam_args=IN_MEMORY)
    return root


def test_a_tiny_cross_validation_scores_every_non_test_patient_held_out(ingested, tmp_path, monkeypatch):
    manifest = json.loads((ingested / "patches" / "manifest.json").read_text())
    test_patients = set(manifest["splits"]["test"]["patient_ids"])
    config = json.loads(patient_cv.DEFAULT_CONFIG.read_text())
    config["folds"] = 2
    config["patch"].update(epochs=1, batch_size=16)
    config["patch"]["recipes"] = {"stain_amount": config["patch"]["recipes"]["stain_amount"],
                                  "normalized": {**config["patch"]["recipes"]["stain_normalized"],
                                                 "slide_context_sigmas": [0.01, 1]}}
    config["mil"].update(epochs=1, batch_size=4)
    config["mil"]["model"] = {"image_size": 100, "tile_size": 50, "encoder_filters": [4], "embedding_units": 8,
                              "attention_dim": 4}
    instance_loss = config["mil"]["recipes"]["stain_amount_instance_loss"]
    config["mil"]["recipes"] = {"instance_loss": {**instance_loss, "tile_context_sigmas": [0.01, 1]},
                                "two_epochs": {**instance_loss, "epochs": 2}}
    fitted_epochs = []
    real_fit = patient_cv._fit
    monkeypatch.setattr(patient_cv, "_fit",
                        lambda model, dataset, epochs, *args, **kwargs:
                        fitted_epochs.append(epochs) or real_fit(model, dataset, epochs, *args, **kwargs))
    normalized_batches = []
    real_normalized = patient_cv.stain_normalized
    monkeypatch.setattr(patient_cv, "stain_normalized",
                        lambda images: normalized_batches.append(images.shape) or real_normalized(images))
    cache = tmp_path / "cache"
    result = patient_cv.run(str(ingested / "patches"), str(ingested / "bags"), config,
                            cache=str(cache))
    # patch x 2 recipes x 2 folds, MIL x 2 folds, then the recipe's own epochs
    assert fitted_epochs == [1, 1, 1, 1, 1, 1, 2, 2]
    # The normalised recipe: all patches once (kept for both folds), then each fold's region tiles.
    assert len(normalized_batches) == 3 and normalized_batches[0][1:] == (50, 50, 3)
    assert all(shape[1:] == (50, 50, 3) for shape in normalized_batches)
    normalized, plain = result["patch"]["recipes"]["normalized"], result["patch"]["recipes"]["stain_amount"]
    assert [run["auc"] for run in normalized["runs"]] != [run["auc"] for run in plain["runs"]]

    # A second run reads every fold back from the cache: no training, same numbers.
    fitted_epochs.clear()
    again = patient_cv.run(str(ingested / "patches"), str(ingested / "bags"), config,
                           cache=str(cache))
    assert fitted_epochs == [] and len(list(cache.glob("*.json"))) == 8
    assert again["patch"]["recipes"] == result["patch"]["recipes"]
    assert again["mil"]["recipes"] == result["mil"]["recipes"]
    # A changed recipe, or changed code, is not mistaken for a cached one.
    config["patch"]["recipes"] = {"normalized": {**config["patch"]["recipes"]["normalized"], "weight_averaging": None}}
    patient_cv.run(str(ingested / "patches"), None, config, cache=str(cache))
    assert fitted_epochs == [1, 1]
    monkeypatch.setattr(patient_cv, "code_fingerprint", lambda: "edited")
    patient_cv.run(str(ingested / "patches"), None, config, cache=str(cache))
    assert fitted_epochs == [1, 1, 1, 1]

    folds = result["patch"]["folds"]
    assert len(folds) == 2 and not set(folds[0]) & set(folds[1])
    assert set(folds[0]) | set(folds[1]) == set(PATIENTS) - test_patients  # test patients never used
    patch = result["patch"]["recipes"]["stain_amount"]
    assert [run["held_out"] for run in patch["runs"]] == folds
    for run in patch["runs"]:
        assert set(run["per_patient_auc"]) == set(run["held_out"])
        assert 0.0 <= run["auc"] <= 1.0 and 0.0 <= run["within_bag"] <= 1.0
    assert patch["auc"]["mean"] == pytest.approx(np.mean([run["auc"] for run in patch["runs"]]))
    mil = result["mil"]["recipes"]["instance_loss"]
    assert result["mil"]["folds"] == folds
    for run in mil["runs"]:
        assert 0.0 <= run["auc"] <= 1.0 and 0.0 <= run["within_bag"] <= 1.0
        # A width far below one tile leaves each tile to itself: the tile probabilities alone.
        assert run["tile_within_bag_context"]["0.01"] == pytest.approx(run["tile_within_bag"])
        assert 0.0 <= run["tile_within_bag_context"]["1"] <= 1.0
    assert "tile_within_bag" not in result["mil"]["recipes"]["two_epochs"]["runs"][0]  # not asked for
    for run in normalized["runs"]:
        # The patch probabilities at the regions' cells: alone they rank like the tiles the model
        # scored from the region mosaics (the same patches, read from the other records).
        assert run["within_bag_context"]["0.01"] == pytest.approx(run["within_bag"], abs=0.02)
        assert 0.0 <= run["within_bag_context"]["1"] <= 1.0
        assert set(run["slide_context"]) == {"0.01", "1"}
        assert set(run["best_balanced_accuracy"]) == {"none", "0.01", "1"}
        assert run["best_balanced_accuracy"]["0.01"] == pytest.approx(run["best_balanced_accuracy"]["none"])


def test_cli_errors_are_clear(tmp_path, capsys):
    with pytest.raises(SystemExit):
        patient_cv.main([])  # neither --records nor --bag-records
    assert "--records" in capsys.readouterr().err
    missing = tmp_path / "missing.json"
    assert patient_cv.main(["--records", str(tmp_path), "--config", str(missing)]) == 1
    assert f"{missing}" in capsys.readouterr().err
    assert patient_cv.main(["--records", str(tmp_path / "nowhere")]) != 0
    assert "nowhere" in capsys.readouterr().err
