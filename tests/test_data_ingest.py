"""Ingestion end to end: bad inputs, failures, --overwrite, real data read back with tf.data,
and the real `histopath` CLI."""

from __future__ import annotations

import collections
import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib

import histopath  # noqa: F401  (before TensorFlow)
import numpy as np
import pytest
from PIL import Image

from histopath.data import features
from histopath.data.ingest import MANIFEST_NAME, ingest
from histopath.data.sample import make_sample
from histopath.errors import ConfigError, DataError

# In-process Beam for the quick tests; the end-to-end test and the CLI use the default
# multi-processing runner.
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
HISTOPATH = os.path.join(os.path.dirname(sys.executable), "histopath")
IDC_NAME = re.compile(r"^(\d+)/([01])/\1_idx5_x(\d+)_y(\d+)_class\2\.png$")


def _read_records(output, split):
    import tensorflow as tf

    pattern = os.path.join(output, split, "*")
    files = sorted(tf.io.gfile.glob(pattern))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [tf.train.Example.FromString(record.numpy()) for record in dataset]


def _value(example, name):
    feature = example.features.feature[name]
    kind = feature.WhichOneof("kind")
    values = getattr(feature, kind).value
    assert len(values) == 1, name
    value = values[0]
    return value.decode() if isinstance(value, bytes) and name != features.IMAGE else value


def _count_png(folder):
    return sum(name.endswith(".png") for _, _, names in os.walk(folder, followlinks=True)
               for name in names)


def _leftovers(folder):
    return sorted(n for n in os.listdir(folder) if ".tmp-" in n or ".old-" in n)


def _png_bytes(array, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _giant_png(width=8000, height=7000):
    """A valid RGB PNG of 56 megapixels (mostly zeros, so only ~170 kB on disk)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def idc_sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample") / "idc"
    make_sample("idc", str(root), patients=6, images_per_patient=9, seed=1)
    return root


def test_bad_inputs_are_skipped_with_reasons(idc_sample, tmp_path):
    source = idc_sample
    patient = sorted(os.listdir(idc_sample))[0]
    valid = sorted((idc_sample / patient / "0").iterdir())[0].read_bytes()
    bad = {
        f"{patient}/0/{patient}_idx5_x9001_y1_class0.png": valid[: len(valid) // 2],  # truncated
        f"{patient}/0/{patient}_idx5_x9051_y1_class0.png": b"",  # zero bytes
        f"{patient}/0/{patient}_idx5_x9101_y1_class0.png": b"hello, not an image\n" * 20,
        f"{patient}/0/{patient}_idx5_x9151_y1_class0.png":  # corrupt pixel data
            valid[:60] + bytes(len(valid) - 60),
        f"{patient}/0/{patient}_idx5_x9301_y1_class0.png": _giant_png(),
        f"{patient}/0/{patient}_idx5_x9351_y1_class1.png": valid,  # class folder mismatch
        f"{patient}/0/badly_named.png": valid,
    }
    expected_reason = [
        "corrupt or truncated", "empty file", "not a recognisable image", "corrupt or truncated",
        "more than the limit of", "class folder '0' disagrees", "does not match the IDC pattern",
    ]
    # Read as a pathologist means them: grey, transparent and 16-bit images are converted
    # to 8-bit RGB (stored as they are when the serving graph decodes them the same way).
    converted = {
        f"{patient}/0/{patient}_idx5_x9201_y1_class0.png": _png_bytes(np.full((50, 50), 128, np.uint8), "L"),
        f"{patient}/0/{patient}_idx5_x9251_y1_class0.png": _png_bytes(np.full((50, 50, 4), 128, np.uint8), "RGBA"),
    }
    # Mix the bad files into a real-looking tree: symlinked valid patient folders plus one
    # patient folder holding both its valid files (symlinked) and the bad ones.
    tree = tmp_path / "tree"
    for name in os.listdir(source):
        if name != patient:
            os.makedirs(tree, exist_ok=True)
            os.symlink(source / name, tree / name)
    for klass in ("0", "1"):
        if (source / patient / klass).is_dir():
            os.makedirs(tree / patient / klass, exist_ok=True)
            for file in (source / patient / klass).iterdir():
                os.symlink(file, tree / patient / klass / file.name)
    for relative, data in {**bad, **converted}.items():
        (tree / relative).write_bytes(data)

    output = tmp_path / "out"
    manifest = ingest("idc", str(tree), str(output), beam_args=IN_MEMORY)
    reasons = {item["path"]: item["reason"] for item in manifest["skipped"]}
    assert set(reasons) == set(bad)
    for (relative, _), reason in zip(bad.items(), expected_reason):
        assert reason in reasons[relative], (relative, reasons[relative])
    n_valid = _count_png(idc_sample)
    assert manifest["num_examples"] == n_valid + len(converted)
    assert json.loads((output / MANIFEST_NAME).read_text())["skipped"] == manifest["skipped"]
    assert _leftovers(tmp_path) == []


def test_missing_empty_and_wrong_layout_sources_fail_cleanly(idc_sample, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(DataError, match="does not exist"):
        ingest("idc", str(tmp_path / "missing"), str(output), beam_args=IN_MEMORY)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no files"):
        ingest("idc", str(tmp_path / "empty"), str(output), beam_args=IN_MEMORY)
    with pytest.raises(DataError, match="not in the breakhis layout"):
        ingest("breakhis", str(idc_sample), str(output), beam_args=IN_MEMORY)
    with pytest.raises(ConfigError, match="sum to 1"):
        ingest("idc", str(idc_sample), str(output), splits="train=0.5", beam_args=IN_MEMORY)
    assert not output.exists() and _leftovers(tmp_path) == []


def test_no_usable_image_fails_after_the_pipeline_without_leaving_output(tmp_path):
    source = tmp_path / "corrupt"
    for patient, label in (("101", 0), ("102", 0), ("103", 1), ("104", 1)):
        folder = source / patient / str(label)
        folder.mkdir(parents=True)
        (folder / f"{patient}_idx5_x1_y1_class{label}.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    output = tmp_path / "out"
    with pytest.raises(DataError, match="holds no usable image"):
        ingest("idc", str(source), str(output), seed=42,
               beam_args=IN_MEMORY)
    assert not output.exists()
    assert _leftovers(tmp_path) == []


def test_existing_output_is_refused_unless_overwrite(idc_sample, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("old")
    with pytest.raises(DataError, match="already exists.*--overwrite"):
        ingest("idc", str(idc_sample), str(output), beam_args=IN_MEMORY)
    assert (output / "keep.txt").read_text() == "old"
    manifest = ingest("idc", str(idc_sample), str(output), overwrite=True, shards=2,
                      beam_args=IN_MEMORY)
    assert not (output / "keep.txt").exists()
    assert (output / MANIFEST_NAME).is_file()
    for name, split in manifest["splits"].items():
        assert len(split["shards"]) == 2
        assert split["shards"] == [f"{name}/data-0000{i}-of-00002.tfrecord.gz" for i in range(2)]
        assert sorted(os.listdir(output / name)) == [os.path.basename(s) for s in split["shards"]]
    assert sorted(os.listdir(output)) == sorted([MANIFEST_NAME, "train", "eval", "test"])
    assert _leftovers(tmp_path) == []
    with pytest.raises(DataError, match="must not contain each other"):
        ingest("idc", str(idc_sample), str(idc_sample / "out"), beam_args=IN_MEMORY)


def _symlinked_real_subsets(shared_data, root):
    """4 small real IDC patients and 6 real BreakHis patients, as symlinks (not copies)."""
    idc = shared_data / "idc"
    sizes = {p: _count_png(idc / p) for p in os.listdir(idc)}
    chosen = sorted(sizes, key=lambda p: (sizes[p], p))[:3] + ["8956"]  # 8956: negatives only
    for patient in chosen:
        (root / "idc").mkdir(parents=True, exist_ok=True)
        os.symlink(idc / patient, root / "idc" / patient)
    breast = shared_data / "breakhis-200x-224" / "BreaKHis_v1/histology_slides/breast"
    slides = {
        "benign": ["adenosis/SOB_B_A_14-29960CD", "fibroadenoma/SOB_B_F_14-29960AB",
                   "tubular_adenoma/SOB_B_TA_14-13200", "fibroadenoma/SOB_B_F_14-14134E",
                   "phyllodes_tumor/SOB_B_PT_14-29315EF"],
        "malignant": ["ductal_carcinoma/SOB_M_DC_14-2980", "lobular_carcinoma/SOB_M_LC_14-16196",
                      "mucinous_carcinoma/SOB_M_MC_14-18842", "mucinous_carcinoma/SOB_M_MC_14-18842D"],
    }
    for klass, names in slides.items():
        for name in names:
            link = root / "bh/BreaKHis_v1/histology_slides/breast" / klass / "SOB" / name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(breast / klass / "SOB" / name, link)
    return root / "idc", root / "bh", sum(sizes[p] for p in chosen)


def _check_records_against_sources(manifest, output, source, dataset):
    import tensorflow as tf

    from histopath.models.image_ops import decode_image

    seen = set()
    patients = {}
    for split, info in manifest["splits"].items():
        examples = _read_records(output, split)
        assert len(examples) == info["num_examples"]
        labels = collections.Counter()
        for example in examples:
            path = _value(example, features.SOURCE_PATH)
            data = (source / path).read_bytes()
            assert _value(example, features.IMAGE) == data  # the bytes as stored
            pixels = decode_image(tf.constant(data)).numpy()
            assert np.array_equal(pixels, np.asarray(Image.open(source / path).convert("RGB")))
            assert (_value(example, features.HEIGHT), _value(example, features.WIDTH)) == \
                pixels.shape[:2]
            assert _value(example, features.IMAGE_FORMAT) == "png"
            assert _value(example, features.DATASET) == dataset
            patient = _value(example, features.PATIENT_ID)
            label = _value(example, features.LABEL)
            if dataset == "idc":
                match = IDC_NAME.match(path)
                assert match, path
                assert (patient, label) == (match[1], int(match[2]))
                assert (_value(example, features.PATCH_X), _value(example, features.PATCH_Y)) == (
                    int(match[3]), int(match[4]))
            else:
                parts = path.split("/")
                slide = parts[6].split("-", 1)[1]
                assert label == {"benign": 0, "malignant": 1}[parts[3]]
                assert _value(example, features.SLIDE_ID) == slide
                assert patient == re.match(r"\d+", slide)[0]
                assert _value(example, features.MAGNIFICATION) == 200
                assert _value(example, features.SUBTYPE) == parts[6].split("_")[2]
            labels[features.LABEL_NAMES[label]] += 1
            patients.setdefault(patient, set()).add(split)
            seen.add(path)
        assert dict(labels) == {k: v for k, v in info["label_counts"].items() if v}
        assert sorted({p for p, s in patients.items() if split in s}) == sorted(info["patient_ids"])
    assert all(len(splits) == 1 for splits in patients.values())  # patient-disjoint
    return seen


def test_end_to_end_real_patients_read_back_with_tf_data(shared_data, tmp_path):
    idc_source, bh_source, n_idc = _symlinked_real_subsets(shared_data, tmp_path / "src")

    # Default runner: Beam DirectRunner, multi-processing, 2 workers.
    idc_seed = 42
    manifest = ingest("idc", str(idc_source), str(tmp_path / "idc"), seed=idc_seed, shards=2)
    assert manifest["num_examples"] == n_idc and manifest["skipped"] == []
    assert manifest["num_workers"] == 2
    seen = _check_records_against_sources(manifest, tmp_path / "idc", idc_source, "idc")
    assert len(seen) == n_idc

    bh_seed = 42
    manifest = ingest("breakhis", str(bh_source), str(tmp_path / "bh"), seed=bh_seed,
                      beam_args=IN_MEMORY)
    n_bh = _count_png(bh_source)
    assert manifest["num_examples"] == n_bh
    _check_records_against_sources(manifest, tmp_path / "bh", bh_source, "breakhis")
    by_split = {n: set(s["patient_ids"]) for n, s in manifest["splits"].items()}
    assert "29960" in set().union(*by_split.values())
    assert sum("29960" in p for p in by_split.values()) == 1
    assert manifest["splits"]["train"]["label_counts"]["benign"] > 0
    assert manifest["dataset"] == "breakhis" and manifest["seed"] == bh_seed
    assert manifest["source"] == str(bh_source)
    assert manifest["histopath_version"] == histopath.__version__


def test_cli_ingest_runs_and_reports_errors(idc_sample, tmp_path):
    output = tmp_path / "cli-out"
    done = subprocess.run(
        [HISTOPATH, "ingest", "--dataset", "idc", "--source", str(idc_sample),
         "--output", str(output), "--splits", "train=0.6,eval=0.2,test=0.2", "--seed",
         str(42),
         "--beam-arg=--direct_running_mode=in_memory", "--beam-arg=--direct_num_workers=1"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "train:" in done.stdout and "manifest.json" in done.stdout
    manifest = json.loads((output / MANIFEST_NAME).read_text())
    assert manifest["split_fractions"] == {"train": 0.6, "eval": 0.2, "test": 0.2}
    assert manifest["beam_args"] == ["--direct_running_mode=in_memory", "--direct_num_workers=1"]

    failed = subprocess.run(
        [HISTOPATH, "ingest", "--dataset", "breakhis", "--source", str(idc_sample),
         "--output", str(tmp_path / "never")],
        capture_output=True, text=True, timeout=120,
    )
    assert failed.returncode != 0
    assert failed.stderr.strip().splitlines()[-1].startswith(
        "histopath ingest: error: ") and "not in the breakhis layout" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "never").exists() and _leftovers(tmp_path) == []

    again = subprocess.run(
        [HISTOPATH, "ingest", "--dataset", "idc", "--source", str(idc_sample),
         "--output", str(output)], capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "--overwrite" in again.stderr
