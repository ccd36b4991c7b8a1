"""The model kinds the pipeline can train, compare and push: one registration each.

Everything that depends on which candidates exist reads this registry: the typed
configuration (a settings block per kind, `PipelineConfig.model_configs`), the Trainer
(`components.trainer.run_fn` builds and trains the kind named in its settings), the
winner selection and the run report (one optional input per kind), the CLI (`--models`)
and the exported model's `model_info.json` ("model_kind").

Adding a kind: write its module (a config dataclass, `build(config) -> keras.Model` and
`training_phases(config, training) -> [training.Phase]`; see `models/cnn.py`) and add one
`ModelKind(...)` line to `KINDS` below. docs/models.md walks through it.

This module does not import TensorFlow: a kind's module is imported only when a model is
built or trained (`kind.module()`).
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Any, Callable, Mapping

from histopath.errors import ConfigError
from histopath.models.cnn import CnnConfig
from histopath.models.config import DenseNetConfig, MilConfig


def same_size(transform_size: int, settings: Mapping[str, Any]) -> int:
    """A model input of the Transform's size."""
    del settings
    return transform_size


def whole_tiles(transform_size: int, settings: Mapping[str, Any]) -> int:
    """The largest multiple of the tile size that fits the Transform's size (MIL bags)."""
    tile = int(settings.get("tile_size", MilConfig.tile_size))
    return max(tile, transform_size // tile * tile)


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """One registered candidate.

    Attributes:
      name: its id: the settings key, the Trainer's id (`trainer_<name>`), and
        `model_info["model_kind"]` of its exports.
      title: what people read in reports and `histopath presets`.
      config_type: its typed settings (a `config._JsonConfig` dataclass with
        `image_size`, `mixed_precision` and `test_time_augmentation`).
      module_name: the module defining `build(config)` and `training_phases(config,
        training)`; it may also define `save_extras(model, run_dir)` (files a Trainer
        leaves beside its model, e.g. DenseNet's backbone weights).
      simplicity: rank for the rules that prefer the simpler candidate (lower = fewer
        weights and less compute).
      tiles: the model cuts its input into a bag of tiles (attention and tile outputs).
      default_image_size: the model's input size when its settings give none, from the
        Transform size and its own settings.
    """

    name: str
    title: str
    config_type: type
    module_name: str
    simplicity: int
    tiles: bool = False
    default_image_size: Callable[[int, Mapping[str, Any]], int] = same_size

    def module(self) -> ModuleType:
        """The kind's module (imports TensorFlow)."""
        return importlib.import_module(self.module_name)

    def config(self, values: Mapping[str, Any] | None, transform_size: int) -> Any:
        """Its typed settings from a dict, the image size defaulting from the Transform's."""
        values = dict(values or {})
        values.setdefault("image_size", self.default_image_size(transform_size, values))
        return self.config_type.from_dict(values)


KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (
    ModelKind("densenet", "DenseNet201 transfer learning", DenseNetConfig, "histopath.models.densenet", 2),
    ModelKind("mil", "gated attention MIL", MilConfig, "histopath.models.mil", 1, tiles=True,
              default_image_size=whole_tiles),
    ModelKind("cnn", "plain CNN baseline", CnnConfig, "histopath.models.cnn", 0),
)}
DEFAULT_MODELS = ("densenet", "mil")  # what a run trains when neither preset nor flags say


def get(name: str) -> ModelKind:
    """The kind called `name`.

    Raises:
      ConfigError: no such kind (the message lists them).
    """
    if name not in KINDS:
        raise ConfigError(f"unknown model kind {name!r}; registered: {', '.join(KINDS)}")
    return KINDS[name]


def names() -> tuple[str, ...]:
    """Every registered kind's name, in registration order."""
    return tuple(KINDS)


def kind_of(config: Any) -> ModelKind:
    """The kind whose settings type `config` is.

    Raises:
      ConfigError: not a registered kind's settings.
    """
    for kind in KINDS.values():
        if isinstance(config, kind.config_type):
            return kind
    raise ConfigError(f"not a model config of a registered kind: {type(config).__name__}")
