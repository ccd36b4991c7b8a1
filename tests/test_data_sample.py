"""`histopath make-sample`: synthetic data in the real layouts."""

from __future__ import annotations

import collections
import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from histopath.data import layouts
from histopath.data.sample import make_sample
from histopath.data.split import DEFAULT_SPLITS, patient_strata, split_files
from histopath.errors import ConfigError, DataError


def _digest(folder):
    digest = hashlib.sha256()
    for root, dirs, names in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    made = {}
    for dataset in ("breakhis", "idc"):
        make_sample(dataset, str(root / dataset), seed=0)
        made[dataset] = root / dataset
    return made


@pytest.mark.parametrize("dataset", ["breakhis", "idc"])
def test_sample_parses_with_the_layout_parsers_and_splits_with_both_labels(samples, dataset):
    scan = layouts.scan_source(dataset, str(samples[dataset]))
    assert scan.skipped == []
    assert len({p.patient_id for p in scan.files}) == 12
    assert {p.label for p in scan.files} == {0, 1}
    strata = patient_strata(scan.files)
    split = split_files(scan.files, DEFAULT_SPLITS, seed=42)
    for name, files in split.items():
        # Both strata (and both labels) in every split of the default fractions.
        assert {strata[f.patient_id][0] for f in files} == {0, 1}, name
        assert {f.label for f in files} == {0, 1}, name
    for parsed in scan.files[:20]:
        with Image.open(samples[dataset] / parsed.relative_path) as image:
            assert image.mode == "RGB"
            expected = (230, 150) if dataset == "breakhis" else (50, 50)
            assert image.size == expected


def test_breakhis_sample_has_a_two_slide_patient(samples):
    scan = layouts.scan_source("breakhis", str(samples["breakhis"]))
    slides = collections.defaultdict(set)
    for parsed in scan.files:
        slides[parsed.patient_id].add(parsed.slide_id)
    assert sorted(len(s) for s in slides.values())[-2:] == [2, 2]


def test_idc_sample_is_a_contiguous_grid_with_clustered_positives(samples):
    scan = layouts.scan_source("idc", str(samples["idc"]))
    by_patient = collections.defaultdict(dict)
    for parsed in scan.files:
        by_patient[parsed.patient_id][(parsed.patch_x, parsed.patch_y)] = parsed.label
    for patches in by_patient.values():
        xs = sorted({x for x, _ in patches})
        ys = sorted({y for _, y in patches})
        assert np.all(np.diff(xs) == 50) and np.all(np.diff(ys) == 50)
        assert len(patches) == 64 == len(xs) * len(ys)
        positives = {xy for xy, label in patches.items() if label}
        if positives:  # one connected region (4-neighbourhood)
            stack, seen = [next(iter(positives))], set()
            while stack:
                x, y = stack.pop()
                if (x, y) in seen:
                    continue
                seen.add((x, y))
                stack += [(x + dx, y + dy) for dx, dy in ((50, 0), (-50, 0), (0, 50), (0, -50))
                          if (x + dx, y + dy) in positives]
            assert seen == positives


def test_malignant_images_are_darker_and_more_nuclear(samples):
    scan = layouts.scan_source("breakhis", str(samples["breakhis"]))
    dark = {0: [], 1: []}
    for parsed in scan.files:
        pixels = np.asarray(Image.open(samples["breakhis"] / parsed.relative_path), np.float32)
        # Haematoxylin: blue-purple and dark (red channel low).
        dark[parsed.label].append(float((pixels[..., 0] < 120).mean()))
    assert min(dark[1]) > max(dark[0])


def test_sample_is_deterministic_and_seeded(samples, tmp_path):
    make_sample("idc", str(tmp_path / "again"), seed=0)
    assert _digest(tmp_path / "again") == _digest(samples["idc"])
    make_sample("idc", str(tmp_path / "other"), seed=1, patients=4, images_per_patient=9)
    assert _digest(tmp_path / "other") != _digest(samples["idc"])
    with pytest.raises(DataError, match="already exists"):
        make_sample("idc", str(tmp_path / "other"), seed=1)
    with pytest.raises(ConfigError):
        make_sample("idc", str(tmp_path / "x"), patients=1)
    assert not any(".tmp-" in n for n in os.listdir(tmp_path))
