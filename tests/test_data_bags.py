"""IDC spatial MIL bags: region geometry, label rule, `ingest --bag-size K` read back with
tf.data (synthetic and real patients), and the MIL model's tiling of a region mosaic."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys

import histopath  # noqa: F401  (before TensorFlow)
import numpy as np
import pytest
from PIL import Image

from histopath.data import bags, features
from histopath.data.ingest import MANIFEST_NAME, ingest
from histopath.data.layouts import parse_idc_path
from histopath.data.sample import make_sample
from histopath.errors import ConfigError

IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
HISTOPATH = os.path.join(os.path.dirname(sys.executable), "histopath")
REGION_ID = re.compile(r"^(\d+)/region_x(\d+)_y(\d+)$")
P = bags.IDC_PATCH_SIZE


def _patch(value, height=P, width=P):
    return np.full((height, width, 3), value, np.uint8)


def test_region_key_and_cell_follow_the_idc_offsets():
    # IDC offsets are 1 + 50 * n: slide column n.
    assert bags.region_key(1, 1, 50, 2) == (0, 0)
    assert bags.region_key(51, 51, 50, 2) == (0, 0)
    assert bags.region_key(101, 51, 50, 2) == (1, 0)
    assert bags.region_key(1 + 50 * 7, 1 + 50 * 3, 50, 3) == (2, 1)
    assert bags.cell_in_region(1 + 50 * 7, 1 + 50 * 3, 50, 3) == (1, 0)
    assert bags.region_origin((2, 1), 50, 3) == (300, 150)
    assert bags.region_id("8863", 300, 150) == "8863/region_x300_y150"
    with pytest.raises(ValueError, match="at least 2x2"):
        bags.check_region_patches(1)


def test_tile_cells_put_each_tile_where_its_patch_lies_on_the_slide():
    # Every patch of a 3x3 region: its tile index (row-major) maps back to its own cell.
    x, y = 1 + 50 * 7, 1 + 50 * 3
    origin = bags.region_origin(bags.region_key(x, y, 50, 3), 50, 3)
    columns, rows = bags.tile_cells([origin[0], 0], [origin[1], 600], 3, 50)
    assert columns.shape == rows.shape == (2, 9)
    column, row = bags.cell_in_region(x, y, 50, 3)
    assert (columns[0, row * 3 + column], rows[0, row * 3 + column]) == (x // 50, y // 50)
    np.testing.assert_array_equal(columns[1], [0, 1, 2] * 3)
    np.testing.assert_array_equal(rows[1], [12] * 3 + [13] * 3 + [14] * 3)


def test_assemble_region_places_patches_and_fills_white():
    edge = np.arange(30 * 50 * 3, dtype=np.uint8).reshape(30, 50, 3)  # a bottom-edge patch
    narrow = _patch(7, height=50, width=12)  # a right-edge patch
    mosaic = bags.assemble_region({(0, 0): _patch(10), (2, 0): _patch(20), (1, 2): edge,
                                   (2, 1): narrow}, region_patches=3, patch_size=P)
    assert mosaic.shape == (150, 150, 3) and mosaic.dtype == np.uint8
    assert (mosaic[0:50, 0:50] == 10).all()
    assert (mosaic[0:50, 100:150] == 20).all()
    assert np.array_equal(mosaic[100:130, 50:100], edge)
    assert (mosaic[130:150, 50:100] == 255).all()  # below the edge patch: white
    assert (mosaic[50:100, 100:112] == 7).all() and (mosaic[50:100, 112:150] == 255).all()
    for column, row in [(1, 0), (0, 1), (1, 1), (0, 2), (2, 2)]:  # missing cells
        assert (mosaic[row * 50:(row + 1) * 50, column * 50:(column + 1) * 50] == 255).all()
    with pytest.raises(ValueError, match="outside"):
        bags.assemble_region({(2, 0): _patch(1)}, 2, P)
    with pytest.raises(ValueError, match="larger than"):
        bags.assemble_region({(0, 0): _patch(1, height=51)}, 2, P)
    with pytest.raises(ValueError, match="uint8"):
        bags.assemble_region({(0, 0): np.zeros((50, 50, 3), np.float32)}, 2, P)


def test_label_grid_is_row_major_and_bag_label_is_any_positive():
    labels = {(1, 0): 0, (0, 1): 1, (1, 1): 0}
    assert bags.patch_label_grid(labels, 2) == [-1, 0, 1, 0]
    assert bags.patch_label_grid({}, 3) == [-1] * 9
    assert bags.bag_label([0, 0, 1]) == 1
    assert bags.bag_label([0, 0, -1]) == 0
    assert bags.bag_label(bags.patch_label_grid(labels, 2)) == 1
    assert bags.bag_label([]) == 0


def test_group_into_regions_by_patient_and_region_skips_shared_cells():
    names = ["7/0/7_idx5_x1_y1_class0.png", "7/1/7_idx5_x51_y51_class1.png",
             "7/0/7_idx5_x101_y1_class0.png", "8/0/8_idx5_x1_y1_class0.png",
             "7/0/7_idx5_x60_y60_class0.png"]  # same 50-px cell as x51_y51
    files = [parse_idc_path(name) for name in names]
    regions, skipped = bags.group_into_regions(files, 2)
    assert [(r.patient_id, r.column, r.row, len(r.files)) for r in regions] == [
        ("7", 0, 0, 2), ("7", 1, 0, 1), ("8", 0, 0, 1)]
    assert [s.path for s in skipped] == ["7/1/7_idx5_x51_y51_class1.png"]
    assert "same bag cell as 7/0/7_idx5_x60_y60_class0.png" in skipped[0].reason
    region = regions[0]
    assert bags.Region.from_dict(json.loads(json.dumps(region.to_dict()))) == region
    assert region.region_id == "7/region_x0_y0"


# --- ingestion -------------------------------------------------------------------------


def _read_records(output, split):
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(os.path.join(output, split, "*")))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [tf.train.Example.FromString(record.numpy()) for record in dataset]


def _values(example, name):
    feature = example.features.feature[name]
    return list(getattr(feature, feature.WhichOneof("kind")).value)


def _value(example, name):
    (value,) = _values(example, name)
    return value.decode() if isinstance(value, bytes) and name != features.IMAGE else value


def _expected_regions(source, k):
    """(patient, region col, region row) -> {cell: (relative path, label)}, from names."""
    regions = collections.defaultdict(dict)
    for root, _, names in os.walk(source, followlinks=True):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), source)
            parsed = parse_idc_path(relative)
            key = bags.region_key(parsed.patch_x, parsed.patch_y, P, k)
            cell = bags.cell_in_region(parsed.patch_x, parsed.patch_y, P, k)
            regions[(parsed.patient_id, *key)][cell] = (relative, parsed.label)
    return regions


def _check_bag_records(manifest, output, source, k, invalid=()):
    """Every record against the source patches; returns {region id: (mosaic, grid)}."""
    import tensorflow as tf

    from histopath.models.image_ops import decode_image

    expected = _expected_regions(source, k)
    seen = {}
    split_of_patient = {}
    for split, info in manifest["splits"].items():
        examples = _read_records(output, split)
        assert len(examples) == info["num_examples"] > 0
        label_counts = collections.Counter()
        for example in examples:
            region = _value(example, features.SOURCE_PATH)
            patient, origin_x, origin_y = REGION_ID.match(region).groups()
            origin_x, origin_y = int(origin_x), int(origin_y)
            assert origin_x % (P * k) == 0 and origin_y % (P * k) == 0
            assert (_value(example, features.PATCH_X), _value(example, features.PATCH_Y)) == (
                origin_x, origin_y)
            assert _value(example, features.PATIENT_ID) == patient
            assert _value(example, features.BAG_SIZE) == k
            assert _value(example, features.DATASET) == "idc"
            assert _value(example, features.IMAGE_FORMAT) == "png"
            assert (_value(example, features.HEIGHT), _value(example, features.WIDTH)) == (
                P * k, P * k)
            mosaic = decode_image(tf.constant(_value(example, features.IMAGE))).numpy()
            assert mosaic.shape == (P * k, P * k, 3)
            grid = _values(example, features.BAG_PATCH_LABELS)
            assert len(grid) == k * k
            cells = expected[(patient, origin_x // (P * k), origin_y // (P * k))]
            valid_labels = []
            for row in range(k):
                for column in range(k):
                    block = mosaic[row * P:(row + 1) * P, column * P:(column + 1) * P]
                    entry = cells.get((column, row))
                    if entry is None or entry[0] in invalid:
                        assert grid[row * k + column] == -1
                        assert (block == 255).all(), (region, column, row)
                        continue
                    relative, label = entry
                    patch = np.asarray(Image.open(source / relative).convert("RGB"))
                    height, width = patch.shape[:2]
                    assert np.array_equal(block[:height, :width], patch), (region, relative)
                    assert (block[height:] == 255).all() and (block[:, width:] == 255).all()
                    assert grid[row * k + column] == label
                    valid_labels.append(label)
            assert _value(example, features.LABEL) == int(any(valid_labels))
            label_counts[features.LABEL_NAMES[_value(example, features.LABEL)]] += 1
            assert split_of_patient.setdefault(patient, split) == split  # patient-disjoint
            assert region not in seen
            seen[region] = (mosaic, grid)
        assert dict(label_counts) == {n: c for n, c in info["label_counts"].items() if c}
        assert sorted(p for p, s in split_of_patient.items() if s == split) == sorted(
            info["patient_ids"])
    # Every region with at least one valid patch became exactly one record.
    with_valid = {bags.region_id(p, c * P * k, r * P * k)
                  for (p, c, r), cells in expected.items()
                  if any(rel not in invalid for rel, _ in cells.values())}
    assert set(seen) == with_valid
    return seen


@pytest.fixture(scope="module")
def bagged_sample(tmp_path_factory):
    """A synthetic IDC sample plus a bottom-edge patch and a truncated patch, ingested
    with `histopath ingest --bag-size 2` (the real CLI, in-process Beam)."""
    root = tmp_path_factory.mktemp("bags")
    source = root / "idc"
    make_sample("idc", str(source), patients=6, images_per_patient=9, seed=3)
    patient = sorted(os.listdir(source))[-1]
    names = [n for _, _, ns in os.walk(source / patient) for n in ns]
    parsed = [parse_idc_path(f"{patient}/{n.rsplit('class', 1)[1][0]}/{n}") for n in names]
    bottom = max(p.patch_y for p in parsed)
    left = min(p.patch_x for p in parsed)
    # A smaller slide-edge patch below the grid, and a truncated one beside it.
    edge = np.random.default_rng(0).integers(0, 200, (30, 50, 3), dtype=np.uint8)
    (source / patient / "1").mkdir(exist_ok=True)
    Image.fromarray(edge).save(source / patient / "1" /
                               f"{patient}_idx5_x{left}_y{bottom + 50}_class1.png")
    good = (source / patient / "1" / f"{patient}_idx5_x{left}_y{bottom + 50}_class1.png")
    truncated = f"{patient}/0/{patient}_idx5_x{left + 50}_y{bottom + 50}_class0.png"
    (source / patient / "0").mkdir(exist_ok=True)
    (source / truncated).write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    output = root / "out"
    done = subprocess.run(
        [HISTOPATH, "ingest", "--dataset", "idc", "--source", str(source), "--output",
         str(output), "--bag-size", "2", "--splits", "train=0.5,eval=0.25,test=0.25",
         "--seed", "1", *(f"--beam-arg={arg}" for arg in IN_MEMORY)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "2x2-patch bags" in done.stdout
    return source, output, truncated


def test_ingest_bag_size_writes_region_mosaics(bagged_sample):
    source, output, truncated = bagged_sample
    manifest = json.loads((output / MANIFEST_NAME).read_text())
    assert manifest["bag_size"] == 2
    assert {features.BAG_PATCH_LABELS, features.BAG_SIZE, features.PATCH_X} <= set(
        manifest["features"])
    assert [s["path"] for s in manifest["skipped"]] == [truncated]
    assert "corrupt or truncated" in manifest["skipped"][0]["reason"]
    seen = _check_bag_records(manifest, output, source, 2, invalid={truncated})
    assert len(seen) == manifest["num_examples"]
    grids = [grid for _, grid in seen.values()]
    assert any(-1 in grid for grid in grids)  # regions cut by the slide edge
    assert any(set(grid) == {0, 1} for grid in grids)  # mixed bags: label 1
    assert manifest["splits"]["train"]["label_counts"]["malignant"] > 0


def test_ingest_bag_size_is_refused_for_breakhis_and_below_two(bagged_sample, tmp_path):
    source, _, _ = bagged_sample
    with pytest.raises(ConfigError, match="IDC only"):
        ingest("breakhis", str(source), str(tmp_path / "a"), bag_size=2)
    with pytest.raises(ConfigError, match="at least 2"):
        ingest("idc", str(source), str(tmp_path / "b"), bag_size=1)
    assert not os.listdir(tmp_path)


def test_mil_model_tiles_a_region_mosaic_into_its_patches(bagged_sample):
    import tensorflow as tf

    from histopath.models import image_ops
    from histopath.models.mil import ATTENTION, PROBABILITY, build_mil_model
    from histopath.models.config import MilConfig

    source, output, _ = bagged_sample
    k = 2
    examples = [e for split in ("train", "eval", "test") for e in _read_records(output, split)]

    def image_and_mask(example):
        image = image_ops.resize_and_scale(
            image_ops.decode_image(tf.constant(_value(example, features.IMAGE))), P * k)
        tiles = image_ops.tile_image(image[None], P)
        return image, tiles.numpy()[0], image_ops.tissue_mask(tiles).numpy()[0]

    # A region with both a missing cell (white) and a tile of tissue.
    for example in examples:
        grid = _values(example, features.BAG_PATCH_LABELS)
        if -1 in grid:
            image, tiles, mask = image_and_mask(example)
            if mask.any():
                break
    else:
        pytest.fail("no region with both a missing cell and tissue")
    patient, origin_x, origin_y = REGION_ID.match(
        _value(example, features.SOURCE_PATH)).groups()
    assert tiles.shape == (k * k, P, P, 3)
    cells = _expected_regions(source, k)[(patient, int(origin_x) // (P * k),
                                          int(origin_y) // (P * k))]
    for index in range(k * k):
        row, column = index // k, index % k
        tile = np.round(tiles[index] * 255).astype(np.uint8)
        if grid[index] == -1:
            assert (tile == 255).all()
        else:
            relative, label = cells[(column, row)]
            assert grid[index] == label
            patch = np.asarray(Image.open(source / relative).convert("RGB"))
            assert np.array_equal(tile[:patch.shape[0], :patch.shape[1]], patch)
    assert not any(mask[i] for i in range(k * k) if grid[i] == -1)  # white cells masked

    model = build_mil_model(MilConfig(image_size=P * k, tile_size=P, encoder_filters=(4, 8),
                                      embedding_units=8, attention_dim=4))
    outputs = model(image[None], training=False)
    attention = outputs[ATTENTION].numpy()[0]
    assert outputs[PROBABILITY].shape == (1, 1) and attention.shape == (k * k,)
    assert np.isclose(attention.sum(), 1.0, atol=1e-5)
    assert all(attention[i] == 0 for i in range(k * k) if grid[i] == -1)  # white cells


def test_ingest_bag_size_on_two_real_patients(shared_data, tmp_path):
    source = tmp_path / "idc"
    source.mkdir()
    for patient in ("8916", "9124"):  # 9124 has smaller slide-edge patches
        os.symlink(shared_data / "idc" / patient, source / patient)
    k = 4
    manifest = ingest("idc", str(source), str(tmp_path / "out"), splits="train=0.5,test=0.5",
                      seed=0, bag_size=k, beam_args=IN_MEMORY)
    assert manifest["bag_size"] == k and manifest["skipped"] == []
    assert [len(s["patient_ids"]) for s in manifest["splits"].values()] == [1, 1]
    seen = _check_bag_records(manifest, tmp_path / "out", source, k)
    expected = _expected_regions(source, k)
    assert sum(len(cells) for cells in expected.values()) == 171 + 465  # no shared cell
    assert manifest["num_examples"] == len(expected) == len(seen)
    grids = [grid for _, grid in seen.values()]
    assert any(set(grid) == {0, 1} or set(grid) == {-1, 0, 1} for grid in grids)
    assert all(os.path.islink(source / p) for p in os.listdir(source))  # never copied
