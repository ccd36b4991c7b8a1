"""Code fingerprints in the components' settings, so that the cache notices code changes."""

from __future__ import annotations

import sys

from histopath.pipeline import fingerprint


def test_fingerprint_follows_the_source_of_the_modules(tmp_path, monkeypatch):
    module = tmp_path / "fingerprinted_module.py"
    module.write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = fingerprint.source_fingerprint(["fingerprinted_module"])
    assert fingerprint.source_fingerprint(["fingerprinted_module"]) == before
    module.write_text("VALUE = 2\n")
    assert fingerprint.source_fingerprint(["fingerprinted_module"]) != before
    sys.modules.pop("fingerprinted_module", None)


def test_each_trainer_fingerprints_its_own_model_code_only():
    densenet, mil = fingerprint.TRAINER_MODULES["densenet"], fingerprint.TRAINER_MODULES["mil"]
    assert "histopath.models.densenet" in densenet and "histopath.models.mil" not in densenet
    assert "histopath.models.mil" in mil and "histopath.models.densenet" not in mil
    assert "histopath.models.image_ops" in fingerprint.TRANSFORM_MODULES
    assert fingerprint.source_fingerprint(densenet) != fingerprint.source_fingerprint(mil)
