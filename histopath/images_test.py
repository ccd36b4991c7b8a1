"""The one image reading: every bit depth and mode to 8-bit RGB by its real range."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from histopath import images


def _encoded(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def grey8():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (24, 32)).astype(np.uint8)


def test_16_bit_images_keep_their_high_byte_as_the_serving_graph_decodes_them(grey8):
    import histopath  # noqa: F401
    import tensorflow as tf

    sixteen = (grey8.astype(np.uint16) << 8) | 0x7F  # the same tissue with 16-bit depth
    data = _encoded(Image.fromarray(sixteen))
    decoded = images.decode(data)
    assert decoded.header.mode.startswith("I;16") and not decoded.header.model_native
    assert np.array_equal(np.asarray(decoded.rgb)[..., 0], grey8)
    assert np.array_equal(np.asarray(decoded.rgb), np.asarray(images.decode(_encoded(Image.fromarray(grey8))).rgb))
    # What the serving graph makes of the original file: the same pixels.
    graph = tf.io.decode_image(data, channels=3).numpy()
    assert np.array_equal(graph, np.asarray(decoded.rgb))
    model_input = images.model_bytes(data, decoded)
    assert Image.open(io.BytesIO(model_input)).mode == "RGB"


def test_32_bit_integers_and_floats_are_scaled_from_the_range_they_use(grey8):
    as_int = Image.fromarray(grey8.astype(np.int32) << 16 | 0xFFFF)  # 24 bits used of 32
    assert np.array_equal(np.asarray(images.to_rgb8(as_int))[..., 0], grey8)
    small_int = Image.fromarray(grey8.astype(np.int32))  # only 0..255 used: already 8-bit
    assert np.array_equal(np.asarray(images.to_rgb8(small_int))[..., 0], grey8)
    unit = Image.fromarray(grey8.astype(np.float32) / 255.0)  # floats in [0, 1]
    assert np.array_equal(np.asarray(images.to_rgb8(unit))[..., 0], grey8)
    float_tiff = images.decode(_encoded(unit, "TIFF"))
    assert float_tiff.header.format == "TIFF" and np.array_equal(np.asarray(float_tiff.rgb)[..., 0], grey8)
    wide = Image.fromarray(grey8.astype(np.float32) * 257.0)  # floats in [0, 65535]
    assert np.abs(np.asarray(images.to_rgb8(wide))[..., 0].astype(int) - grey8).max() <= 1


def test_values_without_an_image_meaning_are_refused_with_a_reason():
    with pytest.raises(images.ImageError, match="negative pixel values"):
        images.to_rgb8(Image.fromarray(np.full((4, 4), -5, np.int32)))
    with pytest.raises(images.ImageError, match="not finite"):
        images.to_rgb8(Image.fromarray(np.full((4, 4), np.nan, np.float32)))
    with pytest.raises(images.ImageError, match="range is unknown"):
        images.to_rgb8(Image.fromarray(np.full((4, 4), 1e6, np.float32)))


def test_grey_palette_and_transparent_images_become_rgb():
    grey = Image.fromarray(np.full((4, 4), 90, np.uint8))
    assert np.asarray(images.to_rgb8(grey)).tolist() == [[[90, 90, 90]] * 4] * 4
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[0, 0, 3] = 200, 255  # one opaque red pixel, the rest see-through
    converted = np.asarray(images.to_rgb8(Image.fromarray(rgba, "RGBA")))
    assert converted[0, 0].tolist() == [200, 0, 0] and converted[1, 1].tolist() == [255, 255, 255]
    palette = grey.convert("P")
    assert np.asarray(images.to_rgb8(palette))[0, 0].tolist() == [90, 90, 90]


def test_native_files_are_given_to_the_model_as_they_are_and_others_as_png(grey8):
    rgb = Image.fromarray(np.stack([grey8] * 3, axis=-1))
    jpeg = _encoded(rgb, "JPEG")
    assert images.model_bytes(jpeg, images.decode(jpeg)) is jpeg
    tiff = _encoded(rgb, "TIFF")
    png = images.model_bytes(tiff, images.decode(tiff))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(rgb))


def test_headers_are_checked_before_any_pixel_is_decoded():
    with pytest.raises(images.ImageError, match="empty"):
        images.read_header(b"")
    with pytest.raises(images.ImageError, match="not a recognisable image"):
        images.read_header(b"hello" * 20)
    with pytest.raises(images.ImageError, match="more than the limit of 100 pixels"):
        images.read_header(_encoded(Image.new("RGB", (20, 20))), max_pixels=100)
    with pytest.raises(images.ImageError, match="unsupported image format TIFF"):
        images.read_header(_encoded(Image.new("RGB", (2, 2)), "TIFF"), allowed_formats=images.MODEL_NATIVE_FORMATS)
    truncated = _encoded(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)))[:300]
    with pytest.raises(images.ImageError, match="corrupt or truncated"):
        images.decode(truncated)


def test_decoded_bytes_count_the_samples_not_just_the_pixels():
    rgb = images.read_header(_encoded(Image.new("RGB", (100, 50))))
    floats = images.read_header(_encoded(Image.new("F", (100, 50)), "TIFF"))
    assert (rgb.decoded_bytes, floats.decoded_bytes) == (15_000, 20_000)
    with pytest.raises(images.ImageError, match=r"100x50 pixels of F \(0 MB once decoded\), more than the limit"):
        images.read_header(_encoded(Image.new("F", (100, 50)), "TIFF"), max_decoded_bytes=19_999)
    assert images.read_header(_encoded(Image.new("F", (100, 50)), "TIFF"), max_decoded_bytes=None).mode == "F"


def test_12_bit_grey_in_16_bit_png_is_read_by_its_significant_bits(grey8):
    import struct
    import zlib

    twelve = grey8.astype(np.uint16) << 4  # values use 12 bits of 16
    plain = _encoded(Image.fromarray(twelve))
    assert np.array_equal(np.asarray(images.decode(plain).rgb)[..., 0], grey8)  # by the values' range
    dark = (grey8 // 4).astype(np.uint16) << 4  # a dark 12-bit image: the values alone would say 10 bits
    data = _encoded(Image.fromarray(dark))
    payload = b"sBIT" + bytes([12])
    with_sbit = data[:33] + struct.pack(">I", 1) + payload + struct.pack(">I", zlib.crc32(payload)) + data[33:]
    decoded = images.decode(with_sbit)
    assert decoded.header.significant_bits == 12 and decoded.header.bits == 16
    assert np.array_equal(np.asarray(decoded.rgb)[..., 0], (grey8 // 4).astype(np.uint8))
