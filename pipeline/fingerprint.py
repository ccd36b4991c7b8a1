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
    "histopath.components.image_ops",
    "histopath.components.preprocessing",
)
TRANSFORM_MODULES = _SHARED
TRAINER_MODULES = {
    kind: _SHARED
    + (
        f"histopath.components.{kind}",
        "histopath.components.trainer",
        "histopath.components.training",
        "histopath.components.augment",
        "histopath.components.export",
        "histopath.components.model_config",
        "histopath.components.operating_point",
        "histopath.components.slide_context",
    )
    for kind in ("densenet", "mil")
}
