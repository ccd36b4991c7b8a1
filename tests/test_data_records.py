"""The TensorFlow-free Example serializer and gzip TFRecord writer, checked against TF."""

from __future__ import annotations

import gzip
import os

import histopath  # noqa: F401  (before TensorFlow)
import pytest
import tensorflow as tf

from histopath.data.records import GzipTFRecordWriter, serialize_example


def _reference(values):
    example = tf.train.Example()
    for name, value in values.items():
        items = value if isinstance(value, list) else [value]
        feature = example.features.feature[name]
        if isinstance(items[0], float):
            feature.float_list.value.extend(items)
        elif isinstance(items[0], int):
            feature.int64_list.value.extend(items)
        else:
            feature.bytes_list.value.extend(
                [v.encode() if isinstance(v, str) else v for v in items])
    return example


@pytest.mark.parametrize("values", [
    {"image": bytes(range(256)) * 40, "label": 1, "patient_id": "8863", "patch_x": 1001},
    {"zero": 0, "negative": -7, "big": 2**62, "text": "ünïcode", "empty": b"",
     "ints": [1, 300, 70000], "strings": ["a", "bc"]},
    {"mpp": 4.0, "odd": 0.2519, "label": 0},
])
def test_serialized_examples_parse_identically_in_tensorflow(values):
    serialized = serialize_example(values)
    assert tf.train.Example.FromString(serialized) == _reference(values)
    assert serialize_example(dict(reversed(list(values.items())))) == serialized


@pytest.mark.parametrize("level", [0, 6])
def test_gzip_tfrecord_file_reads_back_with_tf_data(tmp_path, level):
    path = str(tmp_path / "data-00000-of-00001.tfrecord.gz")
    records = [serialize_example({"i": i, "payload": os.urandom(i * 97) + bytes(i * 500)})
               for i in range(50)]
    with GzipTFRecordWriter(path, compression_level=level) as writer:
        for record in records:
            writer.write(record)
    assert os.listdir(tmp_path) == ["data-00000-of-00001.tfrecord.gz"]
    with gzip.open(path) as handle:  # a real gzip file
        assert len(handle.read()) == sum(len(r) + 16 for r in records)
    read = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    assert read == records
    framed_size = sum(len(r) + 16 for r in records)
    if level:  # the zero runs compress; level 0 stores them
        assert os.path.getsize(path) < framed_size * 0.8
    else:
        assert os.path.getsize(path) > framed_size


def test_a_failed_writer_leaves_no_file(tmp_path):
    path = str(tmp_path / "shard.tfrecord.gz")
    with pytest.raises(RuntimeError):
        with GzipTFRecordWriter(path) as writer:
            writer.write(b"x")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
