"""Reading ingestion manifests."""

from __future__ import annotations

import json

import pytest

from histopath.data import manifest as manifest_lib
from histopath.errors import ConfigError, DataError


def test_patients_from_manifest(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"dataset": "breakhis", "splits": {
        "train": {"patient_ids": ["1", "2"]}, "test": {"patient_ids": ["3", "14"]}}}))
    assert manifest_lib.patients_from_manifest(manifest, "test", "breakhis") == ["3", "14"]
    with pytest.raises(ConfigError, match="no split 'eval'"):
        manifest_lib.patients_from_manifest(manifest, "eval")
    with pytest.raises(ConfigError, match="breakhis manifest"):
        manifest_lib.patients_from_manifest(manifest, "test", "idc")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="not a readable ingestion manifest"):
        manifest_lib.patients_from_manifest(tmp_path / "bad.json", "test")
