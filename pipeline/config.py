"""The one typed configuration of a pipeline run, resolved once.

Values come, each layer over the one before: the defaults below < a named preset
(`pipeline.presets`) < a JSON file (`--config`) < command-line flags. `resolve()` merges
the layers (nested settings key by key) and returns a validated `PipelineConfig` whose
model and training settings are typed (`DenseNetConfig`, `MilConfig`, one
`TrainingConfig` per model); `to_dict()` of that is what every run records
(`run_config.json`), and `from_dict()` reads it back.

Every path may be a local path or a URI (`gs://`, `s3://`, `hdfs://`): a local path is
made absolute, a URI is kept as it is (`histopath.fileio`).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence

from histopath import fileio
from histopath.data import spans as spans_lib
from histopath.data.layouts import PIPELINE_DATASETS, SLIDES
from histopath.errors import ConfigError
from histopath.models import registry, stain_methods
from histopath.models.config import AbstentionConfig, CandidateSettings, TrainingConfig
from histopath.models.exported import VERSION_POLICIES

# The local Beam default: DirectRunner with one worker process per core. `--beam-arg`
# replaces it, e.g. `--beam-arg=--direct_running_mode=in_memory`.
DEFAULT_BEAM_ARGS = ("--direct_running_mode=multi_processing", "--direct_num_workers=0")
# Settings given as JSON objects that merge key by key across the layers (and each model
# kind's own settings block, `models.registry`).
NESTED_KEYS = ("training", "model_training", "thresholds", "selection", "abstention", "splits") + registry.names()


@dataclasses.dataclass(frozen=True)
class ThresholdConfig:
    """What a candidate must reach on the test split to be blessed."""

    min_auc: float = 0.70  # image-level ROC AUC lower bound
    min_balanced_accuracy: float = 0.60  # image-level balanced accuracy lower bound
    # The candidate may be at most this much worse (AUC) than the model pushed last.
    max_auc_drop_vs_pushed: float = 0.01


SELECTION_RULES = ("test_auc", "cv_auc", "cv_lower_bound", "cv_simpler_unless_better")


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """How the model to push is chosen among the blessed candidates, and how it is trained
    (`components.winner_selection`; the evidence is in docs/results.md)."""

    # "test_auc": the highest AUC on the test split; "cv_auc": the highest cross-validated
    # AUC over the train and eval patients; "cv_lower_bound": the highest lower bound of
    # that AUC's patient-bootstrap interval; "cv_simpler_unless_better": the simpler
    # candidate (MIL) unless another's cross-validated AUC is higher with the paired
    # interval of the difference above 0. The cv rules need `folds` when there is a choice
    # (two or more models). The default is the rule measured best on BreakHis and IDC
    # (docs/results.md#choosing-the-winner).
    rule: str = "cv_lower_bound"
    # Each Trainer also runs this many patient folds over the train and eval patients
    # (0 = none): the cross-validated predictions the cv rules compare. Run only when
    # there is a choice to make (two or more models) or a refit to cross-validate.
    folds: int = 5
    # The exported model is trained on every train and eval patient for the epochs the
    # folds kept, with the threshold of the cross-validated predictions (needs `folds`).
    # The folds then cross-validate that recipe: each also trains on all its patients for
    # the epochs it kept and predicts the held-out ones with that model.
    refit_on_all: bool = False


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything one pipeline run needs; recorded with the run's outputs."""

    dataset: str = "breakhis"  # "breakhis" | "idc" | "slides": layout of the raw data (docs/slides.md)
    data_dir: str = ""  # raw image root (local path or URI), or ingested records (manifest.json)
    output_dir: str = "outputs"  # pipeline_root/, metadata.sqlite, serving/, report/, logs/
    preset: str = ""  # the named preset the run started from ("" = none)
    pipeline_name: str = "histopath"  # [a-z0-9-]+ (Kubeflow's rule)
    models: tuple[str, ...] = registry.DEFAULT_MODELS  # which candidates train: registered kinds
    image_size: int = 224  # Transform's output size; each model resizes from it
    # Transform normalises every image's stain, inside the exported graph, so serving does
    # the same (`stain_normalization.METHODS`): "none", "od_scaling" (H and E amounts scaled
    # to a reference, `image_ops.normalize_stain`), "macenko" or "reinhard". Older files'
    # true / false mean "od_scaling" / "none".
    stain_normalization: str = "none"
    # IDC only: each Trainer also chooses a decision threshold for patch probabilities
    # averaged over the slide (`evaluation.slide_context`; Gaussian width in patches,
    # 0 = off), stored with the model for `histopath evaluate` and slide prediction.
    slide_context_sigma: float = 0.0
    # Patient-level split fractions of ingestion (names and fractions; sum 1).
    splits: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"train": 0.7, "eval": 0.15, "test": 0.15})
    seed: int = 42  # patient split, augmentation and initialisation seed
    magnifications: tuple[int, ...] = ()  # BreakHis magnifications to keep; () = all
    # IDC only: K >= 2 ingests one record per K x K region of patches (a MIL bag,
    # `data.bags`) instead of one per patch; None = one record per patch.
    bag_size: Optional[int] = None
    # Slides only: tiles of `tile_um` microns stored at `tile_px` pixels (the IDC scale by
    # default: 50 px at 4 µm/px); recorded in model_info so `histopath predict` tiles alike.
    tile_um: float = 200.0
    tile_px: int = 50
    # Which spans a run trains on: "all", or the last N spans (a number).
    span_window: str = "all"
    # Retrain only when the new spans bring at least this many new patients (0 = on every
    # new or changed span).
    min_new_patients: int = 0
    span_store_dir: str = ""  # where each span's records are kept; default OUTPUT/span_store
    # Each registered kind's model settings (its config type, `models.registry`); in the
    # file form each kind's block stands under its own name ("densenet": {...}).
    model_configs: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {
        name: kind.config({}, PipelineConfig.image_size) for name, kind in registry.KINDS.items()})
    # How each kind is trained: in the file form, `training` holds the settings every kind
    # shares and `model_training` a kind's own, each layer over the one before (a later
    # layer's `training` overrides an earlier layer's `model_training`).
    model_training: Mapping[str, TrainingConfig] = dataclasses.field(
        default_factory=lambda: {kind: TrainingConfig() for kind in registry.names()})
    thresholds: ThresholdConfig = dataclasses.field(default_factory=ThresholdConfig)
    selection: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)  # choosing the winner
    # The "not sure" band each Trainer chooses on its held-out predictions (docs/models.md).
    abstention: AbstentionConfig = dataclasses.field(default_factory=AbstentionConfig)
    stop_on_anomalies: bool = False  # fail the run when ExampleValidator finds anomalies
    model_name: str = "histopath"  # TF Serving model name: <serving_dir>/<model_name>/<version>
    version_policy: str = "timestamp"  # "timestamp" (TFX's default) | "increment"
    serving_dir: str = ""  # push destination; default OUTPUT/serving
    beam_args: tuple[str, ...] = DEFAULT_BEAM_ARGS  # every Beam-powered component gets these
    enable_cache: bool = True  # skip components whose inputs, code and settings are unchanged

    # ---- derived paths (strings: local absolute paths or URIs) --------------------------
    @property
    def output_path(self) -> str:
        return fileio.absolute(self.output_dir)

    @property
    def span_store_path(self) -> str:
        return fileio.absolute(self.span_store_dir) if self.span_store_dir else fileio.join(self.output_path, "span_store")

    @property
    def pipeline_root(self) -> str:
        return fileio.join(self.output_path, "pipeline_root")

    @property
    def metadata_path(self) -> str:
        return fileio.join(self.output_path, "metadata.sqlite")

    @property
    def serving_path(self) -> str:
        return fileio.absolute(self.serving_dir) if self.serving_dir else fileio.join(self.output_path, "serving")

    @property
    def report_dir(self) -> str:
        return fileio.join(self.output_path, "report")

    @property
    def logs_dir(self) -> str:
        return fileio.join(self.output_path, "logs")

    def __post_init__(self):
        try:  # the older boolean form, read as the method it meant
            object.__setattr__(self, "stain_normalization", stain_methods.method_name(self.stain_normalization))
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def model_config(self, kind: str) -> Any:
        """The typed config of model `kind`."""
        return self.model_configs[kind]

    # ---- validation and (de)serialisation ----------------------------------------------
    def validate(self) -> "PipelineConfig":
        """Checks the values; raises ConfigError naming the bad field."""
        if self.dataset not in PIPELINE_DATASETS:
            raise ConfigError(f"dataset must be one of {PIPELINE_DATASETS}, got {self.dataset!r}")
        if not float(self.tile_um) > 0 or int(self.tile_px) < 1:
            raise ConfigError(f"tile_um must be positive and tile_px at least 1, got {self.tile_um} and {self.tile_px}")
        unknown = [m for m in self.models if m not in registry.KINDS]
        if not self.models or unknown:
            raise ConfigError(f"models must be a non-empty subset of {registry.names()}, got {list(self.models)}")
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
        spans_lib.parse_window(self.span_window)
        if self.min_new_patients < 0:
            raise ConfigError(f"min_new_patients must be >= 0, got {self.min_new_patients}")
        if self.bag_size is not None and (self.dataset != "idc" or int(self.bag_size) < 2):
            raise ConfigError(f"bag_size must be None, or at least 2 for idc, got {self.bag_size} for {self.dataset}")
        selection = self.selection
        if selection.rule not in SELECTION_RULES:
            raise ConfigError(f"selection.rule must be one of {SELECTION_RULES}, got {selection.rule!r}")
        if selection.folds == 1 or selection.folds < 0:
            raise ConfigError(f"selection.folds must be 0 (none) or at least 2, got {selection.folds}")
        choosing = len(self.models) > 1
        if not selection.folds and ((choosing and selection.rule != "test_auc") or selection.refit_on_all):
            raise ConfigError(f"selection.rule {selection.rule!r}"
                              + (" and refit_on_all" if selection.refit_on_all else "")
                              + " need cross-validation: set selection.folds (e.g. 5), or rule test_auc")
        if selection.refit_on_all and self.slide_context_sigma:
            raise ConfigError("selection.refit_on_all cannot be combined with slide_context_sigma yet (the "
                              "slide-context threshold needs held-out eval patients)")
        if sorted(self.model_training) != sorted(registry.names()) or sorted(self.model_configs) != sorted(
                registry.names()):
            raise ConfigError(f"model_training and model_configs must hold one entry per model kind {registry.names()}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved settings as JSON values."""
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if field.name != "model_configs"}
        data.update(
            models=list(self.models), magnifications=list(self.magnifications), beam_args=list(self.beam_args),
            splits=dict(self.splits),
            model_training={kind: config.to_dict() for kind, config in self.model_training.items()},
            thresholds=dataclasses.asdict(self.thresholds), selection=dataclasses.asdict(self.selection),
            abstention=self.abstention.to_dict(),
            **{kind: config.to_dict() for kind, config in self.model_configs.items()},
        )
        return data

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PipelineConfig":
        """Builds a config from settings in the file form (see `resolve`) or from `to_dict()`."""
        return resolve(values)


def _check_keys(values: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown {where} key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")


_FILE_KEYS = tuple(field.name for field in dataclasses.fields(PipelineConfig) if field.name != "model_configs") + (
    "training",) + registry.names()


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`; the `NESTED_KEYS` (and settings inside them) merge key by key.

    Raises:
      ConfigError: a key no layer knows.
    """
    _check_keys(override, _FILE_KEYS, "configuration")
    result = copy.deepcopy(dict(base))
    for key, value in override.items():
        if key in NESTED_KEYS and isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merge_nested(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_nested(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merge_nested(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _training_configs(layers: Sequence[Mapping[str, Any]], seed: int) -> dict[str, TrainingConfig]:
    """One TrainingConfig per kind: the run's seed < each layer's shared `training` < that
    layer's `model_training[kind]`, layer by layer.

    Raises:
      ConfigError: `model_training` names an unknown kind or is not an object per kind.
    """
    per_kind: dict[str, dict[str, Any]] = {kind: {"seed": seed} for kind in registry.names()}
    for layer in layers:
        shared = layer.get("training") or {}
        own = layer.get("model_training") or {}
        if not isinstance(shared, Mapping) or not isinstance(own, Mapping) or sorted(
                set(own) - set(registry.names())) or not all(isinstance(v, Mapping) for v in own.values()):
            raise ConfigError(f"training must be TrainingConfig fields and model_training must map model kinds "
                              f"{registry.names()} to TrainingConfig fields, got {sorted(own)}")
        for kind in per_kind:
            per_kind[kind] = _merge_nested(_merge_nested(per_kind[kind], shared), own.get(kind, {}))
    return {kind: TrainingConfig.from_dict(values) for kind, values in per_kind.items()}


def resolve(*layers: Mapping[str, Any]) -> PipelineConfig:
    """Merges settings layers (later ones win, see `merge`) and builds the typed config.

    The file form is `PipelineConfig`'s fields as JSON, each model kind's settings under
    its name (`"densenet": {...}`, partial), `thresholds` and `selection` partial,
    `training` the TrainingConfig fields every kind shares and `model_training` a kind's
    own (e.g. `{"mil": {"epochs": 6}}`). A kind's `image_size` defaults from the
    Transform size (`registry.ModelKind.default_image_size`). `to_dict()` writes this
    same form (every kind's training under `model_training`).

    Raises:
      ConfigError: an unknown key or an invalid value, naming it.
    """
    values: dict[str, Any] = {}
    for layer in layers:
        values = merge(values, layer)
    seed = int(values.get("seed", PipelineConfig.seed))
    image_size = int(values.get("image_size", PipelineConfig.image_size))
    thresholds = values.get("thresholds") or {}
    if not isinstance(thresholds, Mapping):
        raise ConfigError("thresholds must be an object of ThresholdConfig fields")
    _check_keys(thresholds, [f.name for f in dataclasses.fields(ThresholdConfig)], "thresholds")
    selection = values.get("selection") or {}
    if not isinstance(selection, Mapping):
        raise ConfigError("selection must be an object of SelectionConfig fields")
    _check_keys(selection, [f.name for f in dataclasses.fields(SelectionConfig)], "selection")
    kwargs = {key: value for key, value in values.items() if key not in ("training",) + registry.names()}
    if "span_window" in kwargs:
        kwargs["span_window"] = str(kwargs["span_window"])
    kwargs.update(
        model_configs={name: kind.config(values.get(name), image_size) for name, kind in registry.KINDS.items()},
        model_training=_training_configs(layers, seed),
        thresholds=ThresholdConfig(**thresholds),
        selection=SelectionConfig(**selection),
        abstention=_abstention(values.get("abstention")),
    )
    for key in ("models", "magnifications", "beam_args"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    if "splits" in kwargs:
        kwargs["splits"] = dict(kwargs["splits"])
    try:
        return PipelineConfig(**kwargs).validate()
    except TypeError as error:  # a value of the wrong JSON type
        raise ConfigError(f"invalid configuration: {error}") from None


def _abstention(values: Any) -> AbstentionConfig:
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError("abstention must be an object of AbstentionConfig fields")
    return AbstentionConfig.from_dict(values)


def load_config_file(path: str) -> dict[str, Any]:
    """Reads a JSON config file (local path or URI) into a dict of settings.

    Raises:
      ConfigError: unreadable, not JSON, or not an object.
    """
    import json

    try:
        text = fileio.read_text(path)
    except Exception as error:  # OSError, tf.errors.NotFoundError, ...
        raise ConfigError(f"cannot read config file {path}: {getattr(error, 'strerror', None) or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return data


def write_config(config: PipelineConfig, path: str) -> None:
    """Records the resolved settings as JSON (written whole)."""
    fileio.write_json(path, config.to_dict())


def cross_validation_folds(config: PipelineConfig) -> int:
    """The folds each Trainer runs: `selection.folds` when the cv rules have candidates to
    compare or a refit is to be cross-validated, else 0 (nothing would read them)."""
    needed = len(config.models) > 1 or config.selection.refit_on_all
    return config.selection.folds if needed else 0


def model_settings(config: PipelineConfig, kind: str) -> dict[str, Any]:
    """What a Trainer of model `kind` needs from the run config (`models.fit.CandidateSettings`,
    its `custom_config`)."""
    return CandidateSettings(
        model_kind=kind, model=config.model_config(kind).to_dict(), training=config.model_training[kind].to_dict(),
        transform_size=config.image_size, folds=cross_validation_folds(config),
        refit_on_all=config.selection.refit_on_all, slide_context_sigma=float(config.slide_context_sigma),
        dataset=config.dataset, model_name=config.model_name, abstention=config.abstention.to_dict(),
        slide_tiling=slide_tiling(config)).to_dict()


def slide_tiling(config: PipelineConfig) -> dict[str, Any]:
    """For slides: the tiles' scale the Trainer records in model_info ({} for images)."""
    if config.dataset != SLIDES:
        return {}
    return {"tile_um": float(config.tile_um), "tile_px": int(config.tile_px),
            "mpp": float(config.tile_um) / int(config.tile_px)}
