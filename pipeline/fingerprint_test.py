"""Code fingerprints in the components' settings, so that the cache notices code changes."""

from __future__ import annotations

import sys

import pytest

from histopath.models import registry
from histopath.pipeline import fingerprint


@pytest.fixture
def probe_package(tmp_path, monkeypatch):
    """A package `fp_probe`: `entry` imports `helper` inside a function, `helper` imports
    `deep` at the top; `unused` is imported by nobody."""
    package = tmp_path / "fp_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "entry.py").write_text("def run():\n    from fp_probe import helper\n    return helper.VALUE\n")
    (package / "helper.py").write_text("from . import deep\nVALUE = deep.VALUE\n")
    (package / "deep.py").write_text("VALUE = 1\n")
    (package / "unused.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in [name for name in sys.modules if name.startswith("fp_probe")]:
        sys.modules.pop(name)


def test_editing_any_module_the_entry_can_run_changes_its_fingerprint(probe_package):
    before = fingerprint.source_fingerprint(["fp_probe.entry"], package="fp_probe")
    assert set(fingerprint.module_closure(["fp_probe.entry"], package="fp_probe")) == {
        "fp_probe", "fp_probe.entry", "fp_probe.helper", "fp_probe.deep"}
    (probe_package / "unused.py").write_text("VALUE = 2\n")
    assert fingerprint.source_fingerprint(["fp_probe.entry"], package="fp_probe") == before
    (probe_package / "deep.py").write_text("VALUE = 2\n")  # two imports away, one inside a function
    assert fingerprint.source_fingerprint(["fp_probe.entry"], package="fp_probe") != before


def test_a_missing_entry_module_is_an_error():
    with pytest.raises(ImportError, match="no_such_module"):
        fingerprint.module_closure(["histopath.no_such_module"])


def test_each_trainer_covers_the_code_it_runs_and_no_other_kind():
    closures = {kind: set(fingerprint.module_closure(fingerprint.trainer_entries(kind))) for kind in registry.names()}
    for kind, modules in closures.items():
        # The cross-validation the Trainer runs scores and bootstraps its predictions.
        assert {"histopath.models.fit", "histopath.models.cross_validation", "histopath.evaluation.scoring",
                "histopath.evaluation.bootstrap", "histopath.evaluation.patient_rules",
                "histopath.models.training", registry.get(kind).module_name} <= modules, kind
    assert "histopath.models.densenet" not in closures["mil"] | closures["cnn"]
    transform = set(fingerprint.module_closure(fingerprint.TRANSFORM_ENTRY))
    assert "histopath.models.image_ops" in transform and "histopath.models.fit" not in transform
    assert fingerprint.source_fingerprint(fingerprint.trainer_entries("densenet")) != \
        fingerprint.source_fingerprint(fingerprint.trainer_entries("mil"))
