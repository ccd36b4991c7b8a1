"""Small Keras 2 (`tf_keras`) helpers shared by the two classifiers.

`skip_autograph_for_tf_keras()`: TensorFlow's AutoGraph skips modules named `tensorflow`
and `keras`, but not `tf_keras`, so each `tf.function` trace of a `tf_keras` model (training step, evaluation step,
exported signature) converts Keras's own Python source layer by layer. For DenseNet201
(707 layers) this made a forward trace take ~75 s instead of ~17 s on this project's
CPU. Keras's built-in code is written for graph mode and never needed conversion (the
Keras bundled in TensorFlow was always skipped), so adding the same rule for `tf_keras`
changes nothing but speed (it is applied when the model modules are imported). Custom layers (e.g. `histopath.models.mil`) are still
converted as usual.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import tf_keras as keras
from tensorflow.python.autograph.core import config as _autograph_config


def skip_autograph_for_tf_keras() -> None:
    """Adds a `DoNotConvert("tf_keras")` AutoGraph rule once (idempotent)."""
    rules = _autograph_config.CONVERSION_RULES
    for rule in rules:
        if getattr(rule, "_prefix", None) == "tf_keras":
            return
    _autograph_config.CONVERSION_RULES = (
        _autograph_config.DoNotConvert("tf_keras"),
    ) + tuple(rules)


# Mixed bfloat16 pays off where oneDNN has fast bfloat16 matrix units: AMX (Intel), or
# AVX512-BF16 on AMD. On an Intel CPU that shows AVX512-BF16 but no AMX (e.g. a VM that
# hides AMX) it trained DenseNet201 slower than float32 (docs/results.md, "Mixed bfloat16").
AMX_BF16_FLAG, AVX512_BF16_FLAG, AMD_VENDOR = "amx_bf16", "avx512_bf16", "AuthenticAMD"


def prefers_bfloat16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """Whether mixed bfloat16 is the faster precision on this CPU (Linux; False elsewhere):
    AMX-BF16, or AVX512-BF16 on an AMD CPU."""
    try:
        with open(cpuinfo_path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return False
    fields: dict = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    flags, vendor = fields.get("flags", "").split(), fields.get("vendor_id", "")
    return AMX_BF16_FLAG in flags or (AVX512_BF16_FLAG in flags and vendor == AMD_VENDOR)


def resolve_precision(policy: Optional[str]) -> str:
    """"auto" -> "mixed_bfloat16" where it is the faster (`prefers_bfloat16`), else "float32";
    None -> "float32"."""
    if policy == "auto":
        return "mixed_bfloat16" if prefers_bfloat16() else "float32"
    return policy or "float32"


@contextlib.contextmanager
def precision_policy(policy: Optional[str]) -> Iterator[None]:
    """Builds layers under a Keras precision policy, then restores the previous one.

    Args:
      policy: None or "float32" (full precision), "mixed_bfloat16", or "auto" (see
        `resolve_precision`).
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(resolve_precision(policy))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
