"""`tf.train.Example` serialization and gzip TFRecord writing without importing TensorFlow.

Importing TensorFlow costs seconds of CPU in every Beam worker process (measured in
bench/ingest.py's notes: about 6-12 s per process on this machine), more than writing
the whole IDC data set takes. An Example is a tiny protobuf (a map of string -> list of
bytes / int64), so it is encoded here directly in protobuf wire format; the tests check
that `tf.train.Example.FromString` reads it back identically. The TFRecord framing is
the documented one (length, masked CRC-32C of the length, data, masked CRC-32C of the
data) with the C CRC-32C of `google-crc32c` (a dependency of Apache Beam's GCP extra).
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from typing import BinaryIO, Mapping, Sequence, Union

try:  # C implementation, installed with apache-beam[gcp]
    import google_crc32c

    def _crc32c(data: bytes) -> int:
        return google_crc32c.value(data)

except ImportError:  # pragma: no cover - pure-Python fallback, slow
    import crcmod.predefined

    _crc32c = crcmod.predefined.mkPredefinedCrcFun("crc-32c")

FeatureValue = Union[bytes, str, int, float, Sequence[bytes], Sequence[str], Sequence[int]]

_INT64_MASK = (1 << 64) - 1
_WRITE_BUFFER_BYTES = 1 << 20  # records are compressed in blocks of about this size

# gzip level of the shards. The records are mostly PNG/JPEG bytes, which are already
# entropy-coded: on the IDC set level 1 made the shards 0.8 % smaller but cost about as much
# CPU as decoding every image (bench/ingest.py). Level 0 still writes a standard gzip file
# (stored deflate blocks + CRC-32) that tf.data, TFX and `gzip -t` read as GZIP.
DEFAULT_COMPRESSION_LEVEL = 0


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [_encode_varint(i) for i in range(1 << 14)]  # all 1- and 2-byte varints


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    if value < 16384:
        return _SMALL_VARINTS[value]
    return _encode_varint(value)


_TAG_1 = _varint((1 << 3) | 2)  # field 1, length-delimited
_TAG_2 = _varint((2 << 3) | 2)  # field 2, length-delimited
_TAG_3 = _varint((3 << 3) | 2)  # field 3, length-delimited


def _feature(value: FeatureValue) -> bytes:
    """Serialized `tf.train.Feature` holding a BytesList (bytes/str), Int64List (int) or
    FloatList (float, stored as 32-bit)."""
    kind = type(value)
    if kind is float:
        packed = struct.pack("<f", value)
        float_list = _TAG_1 + _varint(len(packed)) + packed
        return _TAG_2 + _varint(len(float_list)) + float_list
    if kind is str:
        value, kind = value.encode("utf-8"), bytes
    if kind is bytes:  # fast path: one bytes value
        bytes_list = _TAG_1 + _varint(len(value)) + value
        return _TAG_1 + _varint(len(bytes_list)) + bytes_list
    if kind is int:  # fast path: one int value
        packed = _varint(value & _INT64_MASK)
        int64_list = _TAG_1 + _varint(len(packed)) + packed
        return _TAG_3 + _varint(len(int64_list)) + int64_list
    values = value if isinstance(value, (list, tuple)) else (value,)
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        packed = b"".join([_varint(v & _INT64_MASK) for v in values])
        int64_list = _TAG_1 + _varint(len(packed)) + packed
        return _TAG_3 + _varint(len(int64_list)) + int64_list
    parts = []
    for v in values:
        if isinstance(v, str):
            v = v.encode("utf-8")
        elif not isinstance(v, (bytes, bytearray)):
            raise TypeError(f"feature value {v!r} is neither bytes, str nor int")
        parts.append(_TAG_1 + _varint(len(v)))
        parts.append(v)
    bytes_list = b"".join(parts)
    return _TAG_1 + _varint(len(bytes_list)) + bytes_list


@functools.lru_cache(maxsize=256)
def _name_field(name: str) -> bytes:
    encoded = name.encode("utf-8")
    return _TAG_1 + _varint(len(encoded)) + encoded


def serialize_example(feature_values: Mapping[str, FeatureValue]) -> bytes:
    """Serializes a `tf.train.Example` from {name: bytes | str | int | list of them}.

    Features are written in sorted name order, so equal inputs give equal bytes.

    Args:
      feature_values: feature name -> value; str is stored UTF-8 encoded in a BytesList,
        int in an Int64List, float in a FloatList. None values are left out.

    Returns:
      The serialized Example, readable with `tf.train.Example.FromString` or
      `tf.io.parse_single_example`.
    """
    # Example{features: Features{feature: map<string, Feature>}}; each map entry is a
    # message {1: key, 2: value}. Large bytes values are joined once, not re-copied per
    # nesting level: the headers are computed from the lengths.
    parts = []
    total = 0
    for name in sorted(feature_values):
        value = feature_values[name]
        if value is None:
            continue
        if type(value) is str:
            value = value.encode("utf-8")
        if type(value) is bytes:
            value_header = _TAG_1 + _varint(len(value))
            bytes_list_length = len(value_header) + len(value)
            feature_header = _TAG_1 + _varint(bytes_list_length) + value_header
            feature_length = len(feature_header) + len(value)
        else:
            value = _feature(value)
            feature_header = b""
            feature_length = len(value)
        name_field = _name_field(name)
        feature_length_varint = _varint(feature_length)
        entry_length = len(name_field) + 1 + len(feature_length_varint) + feature_length
        header = b"".join((_TAG_1, _varint(entry_length), name_field, _TAG_2,
                           feature_length_varint, feature_header))
        parts.append(header)
        parts.append(value)
        total += len(header) + len(value)
    return b"".join([_TAG_1, _varint(total)] + parts)


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One record in TFRecord framing."""
    length = struct.pack("<Q", len(data))
    return b"".join(
        (length, struct.pack("<I", _masked_crc(length)), data, struct.pack("<I", _masked_crc(data)))
    )


class GzipTFRecordWriter:
    """Writes a gzip-compressed TFRecord file (what `tf.data.TFRecordDataset(...,
    compression_type="GZIP")` and TFX ImportExampleGen read).

    The file is written under `<path>.partial` and renamed to `path` by `close()`, so a
    crashed writer never leaves a complete-looking file. Use as a context manager; on an
    exception the partial file is removed.

    Args:
      path: the final file path.
      compression_level: zlib level 0-9 (see DEFAULT_COMPRESSION_LEVEL).
    """

    def __init__(self, path: str, compression_level: int = DEFAULT_COMPRESSION_LEVEL) -> None:
        self.path = path
        self._partial = path + ".partial"
        self._raw: BinaryIO = open(self._partial, "wb")
        # mtime=0 and no file name in the header: identical input gives identical bytes.
        self._gzip = gzip.GzipFile(
            filename="", mode="wb", fileobj=self._raw, compresslevel=compression_level, mtime=0
        )
        self.records = 0
        self._buffer: list[bytes] = []
        self._buffered = 0

    def write(self, record: bytes) -> None:
        """Appends one serialized record."""
        framed = frame_record(record)
        self._buffer.append(framed)
        self._buffered += len(framed)
        self.records += 1
        if self._buffered >= _WRITE_BUFFER_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._gzip.write(b"".join(self._buffer))
            self._buffer, self._buffered = [], 0

    def close(self) -> None:
        """Finishes the file and moves it to its final name."""
        self._flush()
        self._gzip.close()
        self._raw.close()
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        """Discards the partial file."""
        try:
            self._gzip.close()
        finally:
            self._raw.close()
            if os.path.exists(self._partial):
                os.remove(self._partial)

    def __enter__(self) -> "GzipTFRecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
