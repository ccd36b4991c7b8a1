"""The names of the stain normalisation methods, without TensorFlow (the pipeline config reads
them); the methods themselves are in `stain_normalization`."""

from __future__ import annotations

from typing import Any

METHODS = ("none", "od_scaling", "macenko", "reinhard")


def method_name(value: Any) -> str:
    """The method a `stain_normalization` setting names.

    Args:
      value: one of `METHODS`, or the older boolean form: `True`/`1` is `"od_scaling"`,
        `False`/`0`/`None` is `"none"`.

    Raises:
      ValueError: anything else, naming the accepted values.
    """
    if value is None or value is False or (type(value) is int and value == 0):
        return "none"
    if value is True or (type(value) is int and value == 1):
        return "od_scaling"
    if isinstance(value, str) and value in METHODS:
        return value
    raise ValueError(f"stain_normalization must be one of {', '.join(METHODS)} (or true/false), got {value!r}")
