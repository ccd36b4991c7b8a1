"""Named training recipes: the settings that work, shipped with the package.

`histopath run --preset NAME` starts from one (the data set's own preset by default);
`--config` and flags override it key by key (`config.resolve`). `histopath presets` lists
them. How each was chosen and what it reaches is in docs/results.md (the benchmark study
trains the same presets: `bench/`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from histopath.errors import ConfigError

# The augmentation every real-data recipe uses (stain amount and brightness/contrast
# jitter, flips and quarter turns; chosen by patient-level cross-validation on IDC).
_AUGMENT = {"flips": True, "rotations": True, "color_jitter": 0.0, "stain_scale": 0.4, "stain_shift": 0.01,
            "brightness": 0.1, "contrast": 0.2}


@dataclasses.dataclass(frozen=True)
class Preset:
    """One recipe.

    Attributes:
      name: what `--preset` takes.
      trains: one sentence: the data it expects and the models it trains.
      settings: `PipelineConfig` settings in the file form (`config.resolve`).
      results: where its measured figures are (a section of docs/results.md).
      needs: settings the user must give (e.g. the warm-start weights), with a hint.
      takes: what a whole run costs on the project's data on 2 CPU cores (wall time and
        peak memory of the process tree, `bench/preset_run.py`) and where that was measured;
        printed when a run starts, so nobody is surprised by hours.

    What a recipe reaches on real data is measured by the benchmark study and written up
    at `results`, not typed here.
    """

    name: str
    trains: str
    settings: Mapping[str, Any]
    results: str = ""
    needs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    takes: str = ""


PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset(
        name="breakhis",
        trains="BreakHis images: DenseNet201 from random initialisation and the attention MIL, both from scratch; "
               "each cross-validated over 5 patient folds, the winner by the lower bound of its cross-validated "
               "AUC, then refit on every train and eval patient (11 trainings per candidate)",
        settings={
            "dataset": "breakhis", "models": ["densenet", "mil"], "image_size": 224,
            "densenet": {"image_size": 128, "weights": None, "fine_tune_blocks": -1, "freeze_batchnorm": False,
                         "fine_tune_learning_rate": 1e-3, "dropout": 0.3, "mixed_precision": "auto",
                         "test_time_augmentation": True},
            "mil": {"image_size": 224, "tile_size": 32, "mixed_precision": "auto"},
            "training": {"batch_size": 16, "reduce_lr_patience": 2, "early_stopping_patience": 4,
                         "monitor": "val_auc"},
            "model_training": {"densenet": {"epochs": 0, "fine_tune_epochs": 12, "weight_averaging": 0.95,
                                            "early_stopping_start_epoch": 4},
                               "mil": {"epochs": 25}},
            "selection": {"rule": "cv_lower_bound", "folds": 5, "refit_on_all": True},
            "model_name": "breakhis", "version_policy": "increment",
        },
        results="docs/results.md#choosing-the-winner",
        takes="about 1 h 45 min and up to 7 GB on 2 CPU cores for the 585 images of ../shared/data, "
              "DenseNet201's folds 1 h 36 min of it (measured end to end: "
              "docs/results.md#the-default-runs-on-2-cores)",
    ),
    Preset(
        name="breakhis-from-idc",
        trains="BreakHis images: DenseNet201 warm-started from the backbone of an IDC DenseNet201 run",
        settings={
            "dataset": "breakhis", "models": ["densenet"], "image_size": 224,
            "densenet": {"image_size": 128, "fine_tune_blocks": -1, "freeze_batchnorm": False,
                         "head_learning_rate": 1e-3, "fine_tune_learning_rate": 1e-4, "dropout": 0.3,
                         "mixed_precision": "auto", "test_time_augmentation": True},
            "training": {"batch_size": 16, "reduce_lr_patience": 2, "early_stopping_patience": 4,
                         "monitor": "val_auc"},
            "model_training": {"densenet": {"epochs": 2, "fine_tune_epochs": 10, "weight_averaging": 0.95}},
            "model_name": "breakhis", "version_policy": "increment",
        },
        results="docs/results.md#breakhis-200x-224x224",
        needs={"densenet.weights": "the backbone_weights.h5 an IDC DenseNet201 Trainer (--preset idc-densenet) "
                                   "left in its model_run artifact (--warm-start PATH)"},
    ),
    Preset(
        name="idc",
        trains="IDC patches: the plain 6-convolution CNN from random initialisation, Reinhard stain-normalised, "
               "with slide context (chosen over DenseNet201 by patient cross-validation on 170 patients)",
        settings={
            "dataset": "idc", "models": ["cnn"], "image_size": 50, "stain_normalization": "reinhard",
            "slide_context_sigma": 2.0,
            "cnn": {"image_size": 50, "conv_layers": 6, "base_filters": 32, "dropout": 0.3, "learning_rate": 1e-3,
                    "mixed_precision": "auto", "test_time_augmentation": True},
            "training": {"epochs": 8, "batch_size": 64, "reduce_lr_patience": 2, "early_stopping_patience": 4,
                         "monitor": "val_auc", "augment": {**_AUGMENT, "crop_fraction": 0.9},
                         "weight_averaging": 0.998},
            "model_name": "idc", "version_policy": "increment",
        },
        results="docs/results.md#the-idc-preset-chosen-on-170-patients",
        takes="about 13 min and up to 3.3 GB on 2 CPU cores for the 170 patients (27,809 patches) of "
              "../shared/data, 8 epochs of about 70 s (measured: docs/results.md#the-default-runs-on-2-cores)",
    ),
    Preset(
        name="idc-densenet",
        trains="IDC patches: DenseNet201 at 64 px from random initialisation, Reinhard stain-normalised, with slide "
               "context (the IDC default until the cross-validation on 170 patients found it level with the CNN)",
        settings={
            "dataset": "idc", "models": ["densenet"], "image_size": 50, "stain_normalization": "reinhard",
            "slide_context_sigma": 1.5,
            "densenet": {"image_size": 64, "weights": None, "fine_tune_blocks": -1, "freeze_batchnorm": False,
                         "fine_tune_learning_rate": 1e-3, "dropout": 0.2, "mixed_precision": "auto",
                         "test_time_augmentation": True},
            "training": {"epochs": 0, "fine_tune_epochs": 12, "batch_size": 64, "reduce_lr_patience": 2,
                         "early_stopping_patience": 4, "monitor": "val_auc",
                         "augment": {**_AUGMENT, "crop_fraction": 0.9}, "weight_averaging": 0.998},
            "model_name": "idc-densenet", "version_policy": "increment",
        },
        results="docs/results.md#the-idc-preset-chosen-on-170-patients",
        takes="about 1 h 50 min and up to 5.3 GB on 2 CPU cores for the 170 patients (27,809 patches) of "
              "../shared/data, 12 epochs of 7 to 10 minutes (measured: "
              "docs/results.md#the-default-runs-on-2-cores)",
    ),
    Preset(
        name="idc-mil",
        trains="IDC regions of 4x4 patches: the attention MIL (one tile per patch), Reinhard stain-normalised, "
               "with slide context",
        settings={
            "dataset": "idc", "models": ["mil"], "image_size": 200, "bag_size": 4, "stain_normalization": "reinhard",
            "slide_context_sigma": 1.0,
            "mil": {"image_size": 200, "tile_size": 50, "encoder_filters": [32, 64, 128], "learning_rate": 5e-4,
                    "mixed_precision": "auto", "instance_loss_weight": 0.5},
            "training": {"epochs": 20, "batch_size": 16, "reduce_lr_patience": 2, "early_stopping_patience": 4,
                         "monitor": "val_auc", "augment": {**_AUGMENT, "crop_fraction": 1.0},
                         "weight_averaging": 0.99},
            "model_name": "idc-mil", "version_policy": "increment",
        },
        results="docs/results.md#idc-breast-histopathology-images-50x50-patches",
    ),
    Preset(
        name="demo",
        trains="the generated sample (`histopath make-sample`): both models, small and fast, the winner by "
               "test-split AUC (no cross-validation, which would train each model 6 times); blesses what trains",
        settings={
            "dataset": "breakhis", "image_size": 128, "selection": {"rule": "test_auc", "folds": 0},
            "training": {"epochs": 3, "fine_tune_epochs": 1, "batch_size": 16},
            "model_training": {"mil": {"epochs": 6}},
            "mil": {"tile_size": 32},
            "thresholds": {"min_auc": 0.6, "min_balanced_accuracy": 0.5, "max_auc_drop_vs_pushed": 0.05},
            "model_name": "histopath", "version_policy": "increment",
        },
    ),
)}
DEFAULT_PRESETS = {"breakhis": "breakhis", "idc": "idc"}  # the data set's preset when none is named


def get(name: str) -> Preset:
    """The preset called `name`.

    Raises:
      ConfigError: no such preset (the message lists them).
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def layer(name: str) -> dict[str, Any]:
    """The preset's settings as a configuration layer (with `preset` set to its name)."""
    return {**get(name).settings, "preset": name}


def check_needs(name: str, values: Mapping[str, Any]) -> None:
    """Raises ConfigError when the resolved settings lack what the preset needs."""
    for dotted, hint in get(name).needs.items():
        section, key = dotted.split(".")
        if not (values.get(section) or {}).get(key):
            raise ConfigError(f"preset {name} needs {dotted}: {hint}")
