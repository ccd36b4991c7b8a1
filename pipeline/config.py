"""The one typed configuration of a pipeline run.

A `PipelineConfig` is built from defaults, an optional JSON file (`--config`) and CLI
flags, in that order; it is written next to every run's outputs (`run_config.json`) so a
result can always be traced to the exact settings that produced it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any

from histopath.errors import ConfigError

DATASETS = ("breakhis", "idc")
MODEL_KINDS = ("densenet", "mil")
VERSION_POLICIES = ("timestamp", "increment")

# Local Beam default: DirectRunner with one worker process per core (the choice);
# `--beam-arg` replaces it, e.g. `--beam-arg=--direct_running_mode=in_memory`.
DEFAULT_BEAM_ARGS = ("--direct_running_mode=multi_processing", "--direct_num_workers=0")


@dataclasses.dataclass
class ThresholdConfig:
    """What a candidate must reach on the test split to be blessed."""

    min_auc: float = 0.70  # image-level ROC AUC lower bound
    min_balanced_accuracy: float = 0.60  # image-level balanced accuracy lower bound
    # The candidate may be at most this much worse (AUC) than the model pushed last.
    max_auc_drop_vs_pushed: float = 0.01


@dataclasses.dataclass
class PipelineConfig:
    """Everything one pipeline run needs; serialised with the run's outputs."""

    dataset: str = "breakhis"  # "breakhis" | "idc": layout of the raw data folder
    data_dir: str = ""  # raw image folder, or an already ingested folder (manifest.json)
    output_dir: str = "outputs"  # records/, pipeline_root/, metadata.sqlite, serving/
    records_dir: str = ""  # ingested TFRecords; default OUTPUT/records (or data_dir if ingested)
    pipeline_name: str = "histopath"  # [a-z0-9-]+ (Kubeflow's rule)
    models: tuple[str, ...] = MODEL_KINDS  # which Trainers run: subset of MODEL_KINDS
    image_size: int = 224  # Transform's output size; each model resizes from it
    # Transform scales every image's H and E stain amounts to a reference
    # (`image_ops.normalize_stain`); in the exported graph, so serving does the same.
    stain_normalization: bool = False
    # IDC only: each Trainer also chooses a decision threshold for patch probabilities
    # averaged over the slide (`slide_context.py`; Gaussian width in patches, 0 = off),
    # stored with the model for `histopath evaluate` and whole-slide prediction.
    slide_context_sigma: float = 0.0
    splits: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"train": 0.7, "eval": 0.15, "test": 0.15}
    )  # patient-level split fractions used when the CLI ingests
    seed: int = 42  # split, augmentation and initialisation seed
    magnifications: tuple[int, ...] = ()  # BreakHis magnifications to keep; () = all
    densenet: dict[str, Any] = dataclasses.field(default_factory=dict)  # DenseNetConfig fields
    mil: dict[str, Any] = dataclasses.field(default_factory=dict)  # MilConfig fields
    training: dict[str, Any] = dataclasses.field(default_factory=dict)  # TrainingConfig fields
    # Per-model TrainingConfig fields on top of `training`, e.g. {"densenet": {"epochs": 0}}.
    model_training: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    thresholds: ThresholdConfig = dataclasses.field(default_factory=ThresholdConfig)
    stop_on_anomalies: bool = False  # fail the run when ExampleValidator finds anomalies
    model_name: str = "histopath"  # TF Serving model name: serving/<model_name>/<version>
    version_policy: str = "timestamp"  # "timestamp" (TFX default) | "increment"
    serving_dir: str = ""  # push destination; default OUTPUT/serving
    beam_args: tuple[str, ...] = DEFAULT_BEAM_ARGS  # every Beam-powered component gets these
    enable_cache: bool = True  # skip components whose inputs, code and settings are unchanged

    # ---- derived paths -----------------------------------------------------------------
    @property
    def output_path(self) -> pathlib.Path:
        return pathlib.Path(self.output_dir).resolve()

    @property
    def records_path(self) -> pathlib.Path:
        return pathlib.Path(self.records_dir).resolve() if self.records_dir else (
            self.output_path / "records"
        )

    @property
    def pipeline_root(self) -> pathlib.Path:
        return self.output_path / "pipeline_root"

    @property
    def metadata_path(self) -> pathlib.Path:
        return self.output_path / "metadata.sqlite"

    @property
    def serving_path(self) -> pathlib.Path:
        return pathlib.Path(self.serving_dir).resolve() if self.serving_dir else (
            self.output_path / "serving"
        )

    @property
    def report_dir(self) -> pathlib.Path:
        return self.output_path / "report"

    # ---- validation and (de)serialisation ----------------------------------------------
    def validate(self) -> "PipelineConfig":
        """Checks the values; raises ConfigError naming the bad field."""
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        unknown = [m for m in self.models if m not in MODEL_KINDS]
        if not self.models or unknown:
            raise ConfigError(f"models must be a non-empty subset of {MODEL_KINDS}, got {list(self.models)}")
        bad_kinds = sorted(set(self.model_training) - set(MODEL_KINDS))
        if bad_kinds or not all(isinstance(v, dict) for v in self.model_training.values()):
            raise ConfigError(f"model_training must map model kinds {MODEL_KINDS} to TrainingConfig fields, "
                              f"got keys {sorted(self.model_training)}")
        if self.version_policy not in VERSION_POLICIES:
            raise ConfigError(f"version_policy must be one of {VERSION_POLICIES}")
        if self.slide_context_sigma < 0 or (self.slide_context_sigma and self.dataset != "idc"):
            raise ConfigError("slide_context_sigma must be >= 0, and 0 unless dataset is idc (only IDC "
                              f"patches carry slide positions), got {self.slide_context_sigma} for {self.dataset}")
        if self.image_size < 32:
            raise ConfigError(f"image_size must be at least 32, got {self.image_size}")
        if not re.fullmatch(r"[a-z0-9-]+", self.pipeline_name):
            raise ConfigError(f"pipeline_name must match [a-z0-9-]+, got {self.pipeline_name!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.model_name):
            raise ConfigError(f"model_name must be a plain folder name, got {self.model_name!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["models"] = list(self.models)
        data["magnifications"] = list(self.magnifications)
        data["beam_args"] = list(self.beam_args)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PipelineConfig":
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        values = dict(data)
        if "thresholds" in values and isinstance(values["thresholds"], dict):
            threshold_names = {f.name for f in dataclasses.fields(ThresholdConfig)}
            bad = sorted(set(values["thresholds"]) - threshold_names)
            if bad:
                raise ConfigError(f"unknown thresholds keys: {', '.join(bad)}")
            values["thresholds"] = ThresholdConfig(**values["thresholds"])
        for key in ("models", "magnifications", "beam_args"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def write(self, path: pathlib.Path) -> None:
        """Writes the config as JSON (write then rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


def load_config_file(path: str | pathlib.Path) -> dict[str, Any]:
    """Reads a JSON config file into a dict of PipelineConfig fields."""
    path = pathlib.Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return data
