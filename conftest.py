"""Shared pytest fixtures."""

from __future__ import annotations

import os
import pathlib

import histopath  # noqa: F401  (pins Keras 2 before any test imports TensorFlow)
import pytest

# Session-scoped fixtures of several folders' tests (exported test models, the web app),
# registered once here so that "session" means one instance per run (tests/ is on the
# import path: pytest.ini `pythonpath`).
from serving_fixtures import django_app, exported_densenet, exported_models  # noqa: F401,E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent


def _shared_data_dir() -> pathlib.Path:
    configured = os.environ.get("HISTOPATH_SHARED_DATA")
    if configured:
        return pathlib.Path(configured)
    return REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real data sets (`../shared/data`), read in place and never copied.

    On CI (`CI` set) their absence is a failure; elsewhere the tests that need them skip.
    """
    path = _shared_data_dir()
    if not (path / "idc").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real data not found at {path} (set HISTOPATH_SHARED_DATA)")
        pytest.skip(f"real data not found at {path}")
    return path


@pytest.fixture(scope="session")
def artifacts_dir() -> pathlib.Path:
    """A folder (ignored by git) for files a test keeps for people to look at."""
    path = REPO_ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
