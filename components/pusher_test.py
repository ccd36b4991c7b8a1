"""Publishing a model version whole, on a local file system and on an object store
(TensorFlow's `ram://` file system, a real non-local file system)."""

from __future__ import annotations

import os

import pytest

from histopath import fileio
from histopath.components import pusher
from histopath.models import exported


def _model(folder):
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    (folder / "assets.extra").mkdir()
    (folder / "assets.extra" / "model_info.json").write_text('{"model_kind": "mil"}')
    return folder


def test_version_policies_skip_every_used_number(tmp_path):
    assert pusher.next_version(str(tmp_path), "increment") == 1
    for name in ("1", "7", ".8.tmp-abc", "notes"):
        (tmp_path / name).mkdir()
    assert pusher.next_version(str(tmp_path), "increment") == 8  # 7 has no saved_model.pb: still used
    assert pusher.next_version(str(tmp_path), "timestamp") > 1_700_000_000
    with pytest.raises(ValueError, match="unknown version policy"):
        pusher.next_version(str(tmp_path), "latest")


def test_local_publish_is_all_or_nothing(tmp_path):
    model = _model(tmp_path / "model")
    base = tmp_path / "serving" / "histopath"
    final, version = pusher.publish_model(str(model), str(base), "increment")
    assert (final, version) == (str(base / "1"), 1)
    assert (base / "1" / "variables" / "variables.index").read_bytes() == b"index"
    assert pusher.publish_model(str(model), str(base), "increment")[1] == 2
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]  # no staging folder left behind
    (model / "variables" / "broken").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OSError):
        pusher.publish_model(str(model), str(base), "increment")
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


def test_object_store_publish_copies_saved_model_pb_last_under_an_unused_number(tmp_path):
    model = _model(tmp_path / "model")
    base = "ram://pusher-test/serving/histopath"
    fileio.makedirs(f"{base}/5")  # a half-copied version of someone else: its number is taken
    final, version = pusher.publish_model(str(model), base, "increment")
    assert (final, version) == (f"{base}/6", 6)
    assert fileio.read_bytes(f"{final}/saved_model.pb") == b"graph"
    assert fileio.walk_files(final) == ["assets.extra/model_info.json", "saved_model.pb", "variables/variables.index"]
    assert exported.list_versions(base) == [6]

    # A copy that breaks midway leaves no saved_model.pb, so no model server loads it.
    (model / "variables" / "zz-broken").symlink_to(tmp_path / "nowhere")
    with pytest.raises(Exception):
        pusher.publish_model(str(model), base, "increment")
    assert exported.used_versions(base) == [5, 6, 7]
    assert not fileio.exists(f"{base}/7/saved_model.pb")
    assert exported.list_versions(base) == [6]
    assert pusher.publish_model(str(_model(tmp_path / "model2")), base, "increment")[1] == 8
    fileio.remove_tree("ram://pusher-test")


def test_local_files_are_written_whole(tmp_path):
    fileio.write_json(str(tmp_path / "a" / "b.json"), {"x": 1})
    assert fileio.read_json(str(tmp_path / "a" / "b.json")) == {"x": 1}
    assert fileio.listdir(str(tmp_path / "a")) == ["b.json"]
    assert not [name for name in os.listdir(tmp_path / "a") if ".tmp-" in name]
