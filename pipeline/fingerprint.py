"""Code fingerprints, so that pipeline caching notices a change of model code.

Components name their user code by module path (no per-folder wheel), so TFX's cache key
would not see an edit. Each component's `custom_config` carries the hash of exactly the
source files it runs; editing one model's code re-runs that model's Trainer only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pathlib
from typing import Iterable


def source_fingerprint(module_names: Iterable[str]) -> str:
    """sha256 over the source of the given modules (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(set(module_names)):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise ImportError(f"cannot find module {name}")
        digest.update(name.encode())
        digest.update(pathlib.Path(spec.origin).read_bytes())
    return digest.hexdigest()[:16]


_SHARED = (
    "histopath.data.features",
    "histopath.models.image_ops",
    "histopath.models.preprocessing",
)
TRANSFORM_MODULES = _SHARED
TRAINER_MODULES = {
    kind: _SHARED
    + (
        f"histopath.models.{kind}",
        "histopath.components.trainer",
        "histopath.components.cross_validation",
        "histopath.models.training",
        "histopath.models.augment",
        "histopath.models.export",
        "histopath.models.exported",
        "histopath.models.config",
        "histopath.models.keras_utils",
        "histopath.evaluation.operating_point",
        "histopath.evaluation.slide_context",
        "histopath.evaluation.metrics",
    )
    for kind in ("densenet", "mil")
}
