"""The exported-model contract: which folders are versions."""

from __future__ import annotations

import pytest

from histopath.errors import DataError
from histopath.models.exported import list_versions, resolve_version_dir, used_versions


def test_model_folder_resolution_picks_the_newest_complete_integer_version(tmp_path):
    model = tmp_path / "mil"
    for name, complete in [("1", True), ("2", True), ("10", True), ("11", False), (".12.tmp", True), ("13.tmp", True)]:
        (model / name).mkdir(parents=True)
        if complete:
            (model / name / "saved_model.pb").write_bytes(b"")
    assert resolve_version_dir(str(model)) == str(model / "10")
    assert resolve_version_dir(str(model / "2")) == str(model / "2")
    with pytest.raises(DataError, match="neither a model version folder"):
        resolve_version_dir(model / "11")
    with pytest.raises(DataError, match="does not exist"):
        resolve_version_dir(tmp_path / "nope")


def test_used_versions_count_unfinished_ones_that_list_versions_skips(tmp_path):
    for name in ("1", "3", "x", "0", ".4.tmp-ab"):
        (tmp_path / name).mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"")
    assert used_versions(str(tmp_path)) == [1, 3]
    assert list_versions(str(tmp_path)) == [1]


def test_the_model_image_size_is_read_by_one_function():
    from histopath.errors import DataError
    from histopath.models.exported import model_image_size

    assert model_image_size({"image_size": 64}) == 64
    assert model_image_size({"image_size": [48, 48]}) == 48
    with pytest.raises(DataError, match="gives no image_size"):
        model_image_size({"model_name": "m"})
