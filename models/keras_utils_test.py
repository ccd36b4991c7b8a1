"""Tests of the Keras helpers: precision policy resolution and restoration."""

from __future__ import annotations

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import pytest
import tf_keras as keras

from histopath.models import keras_utils


@pytest.mark.parametrize("vendor, flags, preferred", [
    ("GenuineIntel", "fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile", True),
    ("AuthenticAMD", "fpu sse avx2 avx512f avx512_bf16", True),
    ("GenuineIntel", "fpu sse avx2 avx512f avx512_bf16 avx512_fp16", False),  # AMX hidden: slower
    ("AuthenticAMD", "fpu sse avx2 avx512f", False),
])
def test_bfloat16_is_preferred_where_it_was_measured_faster(tmp_path, vendor, flags, preferred):
    cpuinfo = tmp_path / "cpuinfo"
    first = f"processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: test\nflags\t\t: {flags}\n"
    cpuinfo.write_text(first + "\n" + first.replace(": 0", ": 1"))
    assert keras_utils.prefers_bfloat16(str(cpuinfo)) is preferred
    assert keras_utils.prefers_bfloat16(str(tmp_path / "missing")) is False


def test_auto_precision_follows_the_cpu_and_the_policy_is_restored(monkeypatch):
    assert keras_utils.resolve_precision(None) == "float32"
    assert keras_utils.resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    for native, expected in ((True, "mixed_bfloat16"), (False, "float32")):
        monkeypatch.setattr(keras_utils, "prefers_bfloat16", lambda native=native: native)
        assert keras_utils.resolve_precision("auto") == expected
        with keras_utils.precision_policy("auto"):
            assert keras.mixed_precision.global_policy().name == expected
        assert keras.mixed_precision.global_policy().name == "float32"
