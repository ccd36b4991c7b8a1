"""The benchmarks' shared cache: a result is named by what made it and never computed twice."""

from __future__ import annotations

import json

import pytest

from bench.common import cached_json, content_key

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)


def test_the_key_follows_the_content_not_the_order_of_its_keys():
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})
    assert len(content_key({"a": 1})) == 16 and len(content_key({"a": 1}, length=8)) == 8


def test_a_kept_result_is_read_back_instead_of_computed(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"auc": 0.5 + len(calls)}

    path = tmp_path / "fold.json"
    assert cached_json(path, compute) == ({"auc": 1.5}, False)
    assert cached_json(path, compute) == ({"auc": 1.5}, True) and len(calls) == 1
    assert json.loads(path.read_text()) == {"auc": 1.5}
    assert not list(tmp_path.glob("*.tmp"))  # written under a temporary name, then renamed


def test_without_a_path_nothing_is_kept(tmp_path):
    assert cached_json(None, lambda: {"x": 1}) == ({"x": 1}, False)
    assert not list(tmp_path.iterdir())
