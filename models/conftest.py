"""Fixtures shared by the model tests: DenseNet201 is big, so it is built once."""

from __future__ import annotations

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import pytest

DENSENET_TEST_SIZE = 32


@pytest.fixture(scope="session")
def densenet_32():
    """An untrained float32 DenseNet201 classifier at 32x32 (shared; do not train it)."""
    from histopath.models import densenet, config as model_config

    config = model_config.DenseNetConfig(image_size=DENSENET_TEST_SIZE, weights=None, head_units=8)
    return densenet.build_densenet_model(config)
