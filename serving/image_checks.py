"""Cheap, safe checks of untrusted encoded images before anything decodes them fully.

The model server and the web app both receive image bytes from strangers. Pillow reads
only the header to learn the format and the size, so a decompression bomb (a tiny PNG that
decodes to gigapixels) or a file that is not an image at all is rejected before
TensorFlow spends memory on it.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

from PIL import Image, UnidentifiedImageError

# Formats `tf.io.decode_image` (and so the exported serving graph) decodes natively.
MODEL_NATIVE_FORMATS = ("PNG", "JPEG", "BMP", "GIF")
# Further formats the web app accepts and re-encodes losslessly to PNG for the model.
TRANSCODED_FORMATS = ("TIFF", "WEBP")
# 8-bit pixel modes `tf.io.decode_image(channels=3)` turns into the same RGB as Pillow.
NATIVE_MODES = ("RGB", "RGBA", "L", "LA", "P")
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # ~ 6300 x 6300: far above any patch or 40x field


class ImageCheckError(ValueError):
    """The bytes are not an acceptable image; the message says why, for the user."""


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What the header of an encoded image says.

    Attributes:
      format: Pillow's format name, e.g. "PNG" or "JPEG".
      width: width in pixels.
      height: height in pixels.
      mode: Pillow's pixel mode, e.g. "RGB", "L", "CMYK", "I;16".
    """

    format: str
    width: int
    height: int
    mode: str = "RGB"

    @property
    def model_native(self) -> bool:
        """True when the serving graph decodes these bytes as they are (8-bit RGB/grey)."""
        return self.format in MODEL_NATIVE_FORMATS and self.mode in NATIVE_MODES


def read_header(
    data: bytes,
    *,
    allowed_formats: tuple[str, ...] = MODEL_NATIVE_FORMATS,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ImageHeader:
    """Identifies an encoded image from its header, without decoding the pixels.

    Args:
      data: the encoded file.
      allowed_formats: Pillow format names that are accepted.
      max_pixels: largest accepted `width * height`.

    Returns:
      The format and size.

    Raises:
      ImageCheckError: empty data, not an image, a format outside `allowed_formats`, or
        more than `max_pixels` pixels.
    """
    if not data:
        raise ImageCheckError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                header = ImageHeader(image.format or "", int(image.width), int(image.height), image.mode)
    except Image.DecompressionBombError as error:
        raise ImageCheckError(f"the image is too large to decode safely ({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageCheckError("the file is not a recognisable image (PNG or JPEG expected)") from None
    if header.format not in allowed_formats:
        raise ImageCheckError(
            f"unsupported image format {header.format or 'unknown'} "
            f"(accepted: {', '.join(allowed_formats)})"
        )
    if header.width <= 0 or header.height <= 0:
        raise ImageCheckError("the image has no pixels")
    if header.width * header.height > max_pixels:
        raise ImageCheckError(
            f"the image is {header.width}x{header.height} pixels, more than the limit of "
            f"{max_pixels:,} pixels"
        )
    return header


def decode_rgb(data: bytes, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Fully decodes an encoded image to an RGB Pillow image (catches truncated files).

    Args:
      data: the encoded file (check it with `read_header` first).
      max_pixels: largest accepted `width * height`.

    Returns:
      The decoded image in RGB mode.

    Raises:
      ImageCheckError: the file is truncated or corrupt.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > max_pixels:
                    raise ImageCheckError("the image has too many pixels")
                image.load()
                return image.convert("RGB")
    except ImageCheckError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageCheckError("the image is too large to decode safely") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageCheckError(f"the image is corrupt or truncated ({error})") from None


def encode_png(image: Image.Image) -> bytes:
    """Encodes a Pillow image as PNG bytes (lossless)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
