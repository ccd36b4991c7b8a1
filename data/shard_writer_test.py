"""`shard_writer.validate_image`: what a record keeps of an image file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from histopath.data import shard_writer


def _encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


RGB = Image.fromarray(np.arange(8 * 6 * 3, dtype=np.uint8).reshape(6, 8, 3), "RGB")


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "BMP"])
def test_a_format_the_model_decodes_is_kept_as_it_is_under_its_own_name(image_format):
    data = _encoded(RGB, image_format)
    info = shard_writer.validate_image(data)
    assert info.stored is data and info.image_format == image_format.lower()
    assert (info.height, info.width) == (6, 8) and np.asarray(info.rgb).shape == (6, 8, 3)


@pytest.mark.parametrize("image, image_format", [
    (RGB.convert("P"), "GIF"),  # palette: the graph's decode would differ from to_rgb8
    (Image.fromarray((np.arange(48).reshape(6, 8) * 1000).astype(np.uint16)), "PNG"),  # 16-bit
    (RGB, "TIFF"),
])
def test_other_images_are_stored_as_a_png_of_their_8bit_rgb_pixels(image, image_format):
    info = shard_writer.validate_image(_encoded(image, image_format))
    assert info.image_format == "png"
    with Image.open(io.BytesIO(info.stored)) as stored:
        assert stored.format == "PNG" and stored.mode == "RGB"
        assert np.array_equal(np.asarray(stored), np.asarray(info.rgb))


@pytest.mark.parametrize("data, reason", [(b"", "empty"), (b"not an image", "not a recognisable image")])
def test_bad_files_are_rejected_with_the_reason(data, reason):
    with pytest.raises(shard_writer.ImageRejected, match=reason):
        shard_writer.validate_image(data)
