"""Typed, JSON-safe configurations of the two classifiers and of their training.

The pipeline passes these through the TFX Trainer's `custom_config` as plain dicts
(`to_dict()` / `from_dict()`), so every field is a JSON scalar or list. This module does
not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple, Type, TypeVar

from histopath.errors import ConfigError

PRECISION_POLICIES = (None, "float32", "mixed_bfloat16", "auto")
COLOR_SPACES = ("hed", "hsv")
MONITORS = ("val_loss", "val_auc")

_ConfigT = TypeVar("_ConfigT", bound="_JsonConfig")


class _JsonConfig:
    """Mixin: `to_dict()` / `from_dict()` for (nested) dataclasses of JSON scalars."""

    def to_dict(self) -> dict:
        """Returns a JSON-serialisable dict (tuples become lists)."""

        def convert(value: Any) -> Any:
            if isinstance(value, _JsonConfig):
                return value.to_dict()
            if isinstance(value, (tuple, list)):
                return [convert(item) for item in value]
            return value

        return {field.name: convert(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: Type[_ConfigT], values: Optional[Mapping[str, Any]]) -> _ConfigT:
        """Builds a config from `to_dict()` output; missing keys keep their defaults.

        Raises:
          ConfigError: on an unknown key or an invalid value.
        """
        values = dict(values or {})
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown option(s) {unknown}; known: {sorted(fields)}"
            )
        kwargs = {}
        for name, value in values.items():
            nested_type = _NESTED.get((cls.__name__, name))
            if nested_type is not None and isinstance(value, Mapping):
                value = nested_type.from_dict(value)
            elif isinstance(value, list):  # JSON has no tuples
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)

    def replace(self: _ConfigT, **changes: Any) -> _ConfigT:
        """Returns a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_precision(owner: str, policy: Optional[str]) -> None:
    _check(
        policy in PRECISION_POLICIES,
        f"{owner}.mixed_precision must be one of {PRECISION_POLICIES}, got {policy!r}",
    )


@dataclasses.dataclass(frozen=True)
class DenseNetConfig(_JsonConfig):
    """DenseNet201 transfer-learning classifier (one image -> P(malignant))."""

    # Edge of the square model input in pixels (224 for BreakHis; IDC's 50x50 patches are
    # resized up to this size). At least 32 (DenseNet downsamples by 32).
    image_size: int = 224
    # Backbone weights: "imagenet" (Keras download, needs internet), a path to a local
    # .h5 file (weights of a whole model of this project, or backbone-only weights such
    # as Keras's `*_notop.h5` or `save_backbone_weights()` output; matched by layer name),
    # or None (random initialisation).
    weights: Optional[str] = None
    # Dropout rate on the pooled backbone features (and on the hidden head layer).
    dropout: float = 0.3
    # Units of an optional hidden ReLU layer in the head; 0 = pooled features -> sigmoid.
    head_units: int = 0
    # Phase 2 unfreezes the last N dense-block layers of the backbone (conv5_block32,
    # conv5_block31, ...) and everything after them; 0 skips phase 2, -1 unfreezes all.
    fine_tune_blocks: int = 8
    # Keep the backbone's BatchNormalization layers frozen (inference mode, ImageNet
    # statistics untouched) in phase 2, as recommended for fine-tuning on small data.
    freeze_batchnorm: bool = True
    # Adam learning rate of phase 1 (head only, backbone frozen).
    head_learning_rate: float = 1e-3
    # Adam learning rate of phase 2 (top blocks unfrozen), much lower than phase 1.
    fine_tune_learning_rate: float = 1e-5
    # Keras precision policy: None/"float32", "mixed_bfloat16" (float32 variables,
    # bfloat16 compute; the output layer stays float32) or "auto" (see MilConfig). Its
    # effect on accuracy and speed is measured in docs/results.md.
    mixed_precision: Optional[str] = "auto"
    # Predict (serving, evaluation and the eval-split threshold choice) the mean over the
    # 8 symmetries of the square (quarter turns x mirror): histology has no up or left.
    # Costs 8x the inference compute; its effect is measured in docs/results.md.
    test_time_augmentation: bool = False

    def __post_init__(self) -> None:
        _check(int(self.image_size) >= 32, f"DenseNetConfig.image_size must be >= 32, got {self.image_size}")
        _check(0.0 <= self.dropout < 1.0, f"DenseNetConfig.dropout must be in [0, 1), got {self.dropout}")
        _check(self.head_units >= 0, "DenseNetConfig.head_units must be >= 0")
        _check(self.fine_tune_blocks >= -1, "DenseNetConfig.fine_tune_blocks must be >= -1")
        _check(self.head_learning_rate > 0 and self.fine_tune_learning_rate > 0,
               "DenseNetConfig learning rates must be > 0")
        _check(self.weights is None or isinstance(self.weights, str),
               f"DenseNetConfig.weights must be 'imagenet', a file path or None, got {self.weights!r}")
        _check_precision("DenseNetConfig", self.mixed_precision)


@dataclasses.dataclass(frozen=True)
class MilConfig(_JsonConfig):
    """Attention-based deep multiple-instance classifier (Ilse et al. 2018)."""

    # Edge of the square model input in pixels; must be a multiple of `tile_size`.
    image_size: int = 224
    # Edge of one instance (tile) in pixels; the bag is the image's tile grid, row-major.
    tile_size: int = 32
    # Output channels of the instance encoder's conv blocks (3x3 conv, ReLU, 2x2 max-pool).
    encoder_filters: Tuple[int, ...] = (32, 64, 128)
    # Size of one instance embedding h_k (dense ReLU layer after global pooling).
    embedding_units: int = 128
    # Hidden size of the attention network (V and U are embedding_units -> attention_dim).
    attention_dim: int = 64
    # Gated attention (tanh(Vh) * sigmoid(Uh)); False = plain tanh attention.
    gated_attention: bool = True
    # Give background tiles (glass, see `image_ops.tissue_mask`) zero attention.
    tissue_masking: bool = True
    # Dropout rate on instance embeddings and on the bag embedding.
    dropout: float = 0.25
    # Weight of the instance loss (`mil.instance_loss`: a linear tile classifier trained
    # from the bag labels only, after CLAM) added to the bag loss; 0 disables. The
    # exported model then also returns the classifier's own per-tile probability.
    instance_loss_weight: float = 0.0
    # Adam learning rate.
    learning_rate: float = 5e-4
    # Keras precision policy: None/"float32", "mixed_bfloat16", or "auto" (bfloat16 where
    # it is the faster, `keras_utils.prefers_bfloat16`: AMX, or AVX512-BF16 on AMD; float32
    # elsewhere). Its effect on accuracy and speed is measured in docs/results.md.
    mixed_precision: Optional[str] = "auto"
    # As `DenseNetConfig.test_time_augmentation`; the attention of each symmetry is mapped
    # back onto the original tile grid before averaging.
    test_time_augmentation: bool = False

    def __post_init__(self) -> None:
        _check(self.tile_size >= 8, f"MilConfig.tile_size must be >= 8, got {self.tile_size}")
        _check(
            self.image_size >= self.tile_size and self.image_size % self.tile_size == 0,
            f"MilConfig.image_size ({self.image_size}) must be a multiple of tile_size ({self.tile_size})",
        )
        _check(len(self.encoder_filters) >= 1 and all(int(f) > 0 for f in self.encoder_filters),
               f"MilConfig.encoder_filters must be positive ints, got {self.encoder_filters}")
        _check(self.tile_size >= 2 ** len(self.encoder_filters),
               f"MilConfig: tile_size {self.tile_size} too small for {len(self.encoder_filters)} pooling blocks")
        _check(self.embedding_units > 0 and self.attention_dim > 0, "MilConfig: sizes must be > 0")
        _check(0.0 <= self.dropout < 1.0, f"MilConfig.dropout must be in [0, 1), got {self.dropout}")
        _check(self.learning_rate > 0, "MilConfig.learning_rate must be > 0")
        _check(self.instance_loss_weight >= 0, "MilConfig.instance_loss_weight must be >= 0")
        _check_precision("MilConfig", self.mixed_precision)

    @property
    def grid_shape(self) -> Tuple[int, int]:
        """Tile rows and columns of one bag."""
        return (self.image_size // self.tile_size, self.image_size // self.tile_size)

    @property
    def n_tiles(self) -> int:
        """Instances per bag."""
        rows, cols = self.grid_shape
        return rows * cols


@dataclasses.dataclass(frozen=True)
class AugmentConfig(_JsonConfig):
    """Random training-time augmentation (never applied at evaluation or serving)."""

    # Random horizontal and vertical flips.
    flips: bool = True
    # Random multiples of 90 degrees (square images; 180 degrees only otherwise).
    rotations: bool = True
    # Colour jitter strength; 0 disables. In HED space each of the three channels'
    # optical density (haematoxylin, eosin AND DAB) is scaled by U(1-s, 1+s) and shifted
    # by U(-s, s); in HSV space hue shifts by U(-s, s)/2 and saturation/value scale by
    # U(1-2s, 1+2s). Off by default: in HED space the shift is as large as H&E's own
    # optical densities and tints white glass; `stain_scale` is the realistic stain variation.
    color_jitter: float = 0.0
    # "hed" (haematoxylin-eosin-DAB stain space, Ruifrok & Johnston) or "hsv".
    color_space: str = "hed"
    # Stain-amount jitter (`augment.random_stain_amount`): each image's haematoxylin and
    # eosin optical densities x U(1-s, 1+s), one factor per stain; DAB untouched, white
    # glass stays white. Models pale and dark stainings of other slides and labs; 0 disables.
    # The default recipe was chosen over the former HED jitter by patient-level
    # cross-validation on IDC (docs/results.md).
    stain_scale: float = 0.4
    # Additive stain-amount jitter: H and E optical densities + U(-t, t), in `rgb_to_hed`
    # units; 0 disables.
    stain_shift: float = 0.01
    # Brightness jitter: U(-b, b) added to every pixel of an image (pixels in [0, 1]);
    # 0 disables. Covers pale and dark stainings of other labs (Tellez et al. 2019, "BC").
    brightness: float = 0.1
    # Contrast jitter: deviations from the image's mean scaled by U(1-c, 1+c); 0 disables.
    contrast: float = 0.2
    # Random crop of this fraction of each side, resized back to the input size;
    # 1.0 disables. Skipped when the crop would be smaller than 16 pixels.
    crop_fraction: float = 0.9

    def __post_init__(self) -> None:
        _check(self.color_space in COLOR_SPACES,
               f"AugmentConfig.color_space must be one of {COLOR_SPACES}, got {self.color_space!r}")
        _check(0.0 <= self.color_jitter <= 0.5, "AugmentConfig.color_jitter must be in [0, 0.5]")
        _check(0.0 <= self.stain_scale < 1.0, "AugmentConfig.stain_scale must be in [0, 1)")
        _check(0.0 <= self.stain_shift <= 0.1, "AugmentConfig.stain_shift must be in [0, 0.1]")
        _check(0.0 <= self.brightness <= 0.5, "AugmentConfig.brightness must be in [0, 0.5]")
        _check(0.0 <= self.contrast < 1.0, "AugmentConfig.contrast must be in [0, 1)")
        _check(0.0 < self.crop_fraction <= 1.0, "AugmentConfig.crop_fraction must be in (0, 1]")

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is applied."""
        return (self.flips or self.rotations or self.color_jitter > 0 or self.stain_scale > 0
                or self.stain_shift > 0 or self.brightness > 0 or self.contrast > 0
                or self.crop_fraction < 1.0)


@dataclasses.dataclass(frozen=True)
class TrainingConfig(_JsonConfig):
    """How `training.train_model` fits either classifier.

    Mixed precision is a model option (`DenseNetConfig.mixed_precision`,
    `MilConfig.mixed_precision`) because the policy must be known when layers are built.
    """

    # Epochs of the only phase (MIL, >= 1) or of phase 1, head only (DenseNet; 0 skips
    # it, e.g. for a randomly initialised backbone, which a head cannot learn from).
    epochs: int = 10
    # Epochs of DenseNet phase 2 (top blocks unfrozen); ignored for MIL.
    fine_tune_epochs: int = 10
    # Examples per batch; used by the caller's input pipeline (the datasets given to
    # `train_model` are already batched) and recorded for reference.
    batch_size: int = 32
    # ReduceLROnPlateau on the monitored value (see `monitor`): factor, patience (epochs) and floor.
    reduce_lr_factor: float = 0.2
    reduce_lr_patience: int = 2
    min_learning_rate: float = 1e-7
    # EarlyStopping patience on the monitored value (best weights are restored).
    early_stopping_patience: int = 4
    # Epochs of each phase that EarlyStopping ignores (Keras `start_from_epoch`): a model
    # trained from scratch, or a weight average still holding its random start, can score a
    # lucky eval AUC in its first epochs that early stopping would otherwise keep.
    early_stopping_start_epoch: int = 0
    # What ReduceLROnPlateau, EarlyStopping and DenseNet's phase comparison watch on the
    # eval split: "val_loss" (lower is better) or "val_auc" (higher is better; robust to
    # the class imbalance between a class-weighted training loss and an unweighted eval).
    monitor: str = "val_loss"
    # Restore the weights of each phase's best monitored epoch (EarlyStopping) and drop a
    # phase that did not improve on the ones before it (DenseNet's fine-tuning). False for
    # a refit: it trains exactly the epochs given and keeps its last weights, since the
    # patients it watches are among those it trains on.
    keep_best_epoch: bool = True
    # Momentum of an exponential moving average of the weights (e.g. 0.998: an average over
    # the last ~500 steps), validated every epoch and exported instead of the latest
    # weights; None = no averaging. Steadies models whose eval AUC jumps between epochs.
    weight_averaging: Optional[float] = None
    # Weight the loss by inverse class frequency computed from the training labels.
    class_weights: bool = True
    # Training-set augmentation.
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    # Seed of Python, NumPy, TensorFlow and of the augmentation stream.
    seed: int = 42
    # Batches per epoch (required when the training dataset repeats forever); None =
    # one pass over a finite dataset.
    steps_per_epoch: Optional[int] = None
    # Validation batches per epoch (required when the eval dataset repeats forever).
    validation_steps: Optional[int] = None
    # Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.
    verbose: int = 2
    # Keep the Trainer's serialized training/eval records in memory after the first epoch
    # (no re-reading or decompression; about the uncompressed size of the splits).
    cache_examples: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.augment, Mapping):  # tolerate a plain dict from custom_config
            object.__setattr__(self, "augment", AugmentConfig.from_dict(self.augment))
        _check(self.epochs >= 0, "TrainingConfig.epochs must be >= 0")
        _check(self.fine_tune_epochs >= 0, "TrainingConfig.fine_tune_epochs must be >= 0")
        _check(self.batch_size >= 1, "TrainingConfig.batch_size must be >= 1")
        _check(0.0 < self.reduce_lr_factor < 1.0, "TrainingConfig.reduce_lr_factor must be in (0, 1)")
        _check(self.reduce_lr_patience >= 0 and self.early_stopping_patience >= 0,
               "TrainingConfig patience values must be >= 0")
        _check(self.early_stopping_start_epoch >= 0, "TrainingConfig.early_stopping_start_epoch must be >= 0")
        for name in ("steps_per_epoch", "validation_steps"):
            value = getattr(self, name)
            _check(value is None or int(value) >= 1, f"TrainingConfig.{name} must be None or >= 1")
        _check(self.weight_averaging is None or 0.0 < self.weight_averaging < 1.0,
               f"TrainingConfig.weight_averaging must be None or in (0, 1), got {self.weight_averaging}")
        _check(self.verbose in (0, 1, 2), "TrainingConfig.verbose must be 0, 1 or 2")
        _check(self.monitor in MONITORS, f"TrainingConfig.monitor must be one of {MONITORS}, got {self.monitor!r}")


_NESTED = {("TrainingConfig", "augment"): AugmentConfig}


@dataclasses.dataclass(frozen=True)
class AbstentionConfig(_JsonConfig):
    """How the "not sure" band around the decision threshold is chosen
    (`models.abstention.choose_band`, on the held-out predictions)."""

    # The balanced accuracy the ANSWERED images should reach.
    target_balanced_accuracy: float = 0.95
    # The smallest share of images the model must still answer (the band never leaves
    # out more; when the target needs more, the band stops here and says so).
    min_coverage: float = 0.80

    def __post_init__(self) -> None:
        _check(0.5 <= self.target_balanced_accuracy <= 1.0,
               f"AbstentionConfig.target_balanced_accuracy must be in [0.5, 1], got {self.target_balanced_accuracy}")
        _check(0.0 < self.min_coverage <= 1.0,
               f"AbstentionConfig.min_coverage must be in (0, 1], got {self.min_coverage}")


@dataclasses.dataclass(frozen=True)
class CandidateSettings:
    """What training one candidate needs (a Trainer's `custom_config`, JSON values).

    Attributes:
      model_kind: a `models.registry` kind.
      model: the kind's settings (fields of its config type; the image size included).
      training: `TrainingConfig` fields.
      transform_size: the edge of Transform's output images (the model resizes from it).
      folds: patient folds over the train and eval patients (0 = none).
      refit_on_all: train the exported model on every train and eval patient (needs folds).
      slide_context_sigma: IDC: also choose a slide-context threshold (0 = off).
      dataset: the data set's name (recorded).
      model_name: the TF Serving model name (recorded).
      abstention: `AbstentionConfig` fields (the "not sure" band's rule).
      slide_tiling: slides only: {"tile_um", "tile_px", "mpp"} of the training tiles,
        recorded in model_info; the Trainer then also chooses the slide aggregation
        (`evaluation.slide_calling`). {} for images.
    """

    model_kind: str
    model: Mapping[str, Any]
    training: Mapping[str, Any]
    transform_size: int
    folds: int = 0
    refit_on_all: bool = False
    slide_context_sigma: float = 0.0
    dataset: str = ""
    model_name: str = "histopath"
    abstention: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    slide_tiling: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "CandidateSettings":
        """Reads `to_dict()` output; other keys (a code fingerprint) are ignored."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    def to_dict(self) -> dict[str, Any]:
        """JSON values (a Trainer's `custom_config`)."""
        return {**dataclasses.asdict(self), "model": dict(self.model), "training": dict(self.training),
                "abstention": dict(self.abstention), "slide_tiling": dict(self.slide_tiling)}

    def abstention_config(self) -> AbstentionConfig:
        """The typed "not sure" band settings."""
        return AbstentionConfig.from_dict(self.abstention)

    def model_config(self) -> Any:
        """The kind's typed settings (`models.registry`)."""
        from histopath.models import registry

        return registry.get(self.model_kind).config(self.model, self.transform_size)

    def training_config(self) -> TrainingConfig:
        """The typed training settings."""
        return TrainingConfig.from_dict(self.training)
