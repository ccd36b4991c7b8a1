"""The one reading of an encoded image: bytes in, 8-bit RGB pixels as a pathologist means
them out, or a refusal that says why. Ingestion, `histopath predict`, the model server and
the web app all read images here.

- The header is read first (`read_header`): the format and the pixel count are checked
  before any pixel is decoded, so a decompression bomb costs nothing.
- Pixels are converted by their real range (`to_rgb8`): 16-bit images keep their high
  byte (as the serving graph's PNG decoder does), 32-bit integers keep the top 8 of the
  bits their values use, floats are scaled from [0, 1], [0, 255] or [0, 65535], grey and palette images become RGB, and transparent
  pixels become white glass. Pixel values that have no image meaning (negative, not
  finite) are refused.
- `model_bytes` gives the serving graph the file itself when it decodes it to the same
  pixels, and a lossless PNG of the converted pixels otherwise.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# Formats `tf.io.decode_image` (and so the exported serving graph) decodes natively.
MODEL_NATIVE_FORMATS = ("PNG", "JPEG", "BMP", "GIF")
# Further formats accepted and re-encoded losslessly to PNG for the model.
TRANSCODED_FORMATS = ("TIFF", "WEBP")
ACCEPTED_FORMATS = MODEL_NATIVE_FORMATS + TRANSCODED_FORMATS
# Modes whose pixels the serving graph decodes exactly as `to_rgb8` converts them.
MODEL_NATIVE_MODES = ("RGB", "L")
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # ~ 6300 x 6300: far above any patch or 40x field


class ImageError(ValueError):
    """The bytes are not an acceptable image; the message says why, for the user."""


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What the header of an encoded image says.

    Attributes:
      format: Pillow's format name, e.g. "PNG" or "JPEG".
      width, height: size in pixels.
      mode: Pillow's pixel mode, e.g. "RGB", "L", "I;16", "F".
    """

    format: str
    width: int
    height: int
    mode: str = "RGB"

    @property
    def model_native(self) -> bool:
        """Whether the serving graph decodes the file to the pixels `to_rgb8` gives."""
        return self.format in MODEL_NATIVE_FORMATS and self.mode in MODEL_NATIVE_MODES


def read_header(data: bytes, *, allowed_formats: tuple[str, ...] = ACCEPTED_FORMATS,
                max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageHeader:
    """Identifies an encoded image from its header, without decoding the pixels.

    Raises:
      ImageError: empty, not an image, a format outside `allowed_formats`, no pixels or
        more than `max_pixels`.
    """
    if not data:
        raise ImageError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                header = ImageHeader(image.format or "", int(image.width), int(image.height), image.mode)
    except Image.DecompressionBombError as error:
        raise ImageError(f"the image is too large to decode safely ({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageError("the file is not a recognisable image (PNG or JPEG expected)") from None
    if header.format not in allowed_formats:
        raise ImageError(f"unsupported image format {header.format or 'unknown'} "
                         f"(accepted: {', '.join(allowed_formats)})")
    if header.width <= 0 or header.height <= 0:
        raise ImageError("the image has no pixels")
    if header.width * header.height > max_pixels:
        raise ImageError(f"the image is {header.width}x{header.height} pixels, more than the limit of "
                         f"{max_pixels:,} pixels")
    return header


def _integers_to_8bit(values: np.ndarray, bits: int | None) -> np.ndarray:
    """Keeps the top 8 of `bits` bits; `bits` None: as many bits as the largest value uses."""
    if values.size and values.min() < 0:
        raise ImageError(f"the image has negative pixel values (down to {values.min()})")
    if bits is None:
        bits = max(8, int(values.max()).bit_length() if values.size else 8)
    return (values.astype(np.uint64) >> (bits - 8)).astype(np.uint8)


def _floats_to_8bit(values: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise ImageError("the image has pixel values that are not finite numbers")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low < 0:
        raise ImageError(f"the image has negative pixel values (down to {low:g})")
    for limit in (1.0, 255.0, 65535.0):
        if high <= limit:
            return np.clip(np.round(values * (255.0 / limit)), 0, 255).astype(np.uint8)
    raise ImageError(f"a floating-point image with values up to {high:g}: its range is unknown")


def to_rgb8(image: Image.Image) -> Image.Image:
    """Converts a decoded Pillow image to 8-bit RGB by its real range.

    Raises:
      ImageError: values with no image meaning (negative, not finite, floats beyond 65535).
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I;16") or mode == "I":  # 16-bit files by their depth, 32-bit by the values
        grey = _integers_to_8bit(np.asarray(image), 16 if mode.startswith("I;16") else None)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_floats_to_8bit(np.asarray(image, dtype=np.float64)), mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # see-through = glass
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """An image read and converted.

    Attributes:
      header: what the file's header says.
      rgb: the pixels, 8-bit RGB.
    """

    header: ImageHeader
    rgb: Image.Image


def decode(data: bytes, *, allowed_formats: tuple[str, ...] = ACCEPTED_FORMATS,
           max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> DecodedImage:
    """Reads the header, decodes every pixel (catching truncated files) and converts to RGB.

    Raises:
      ImageError: as `read_header`, a corrupt or truncated file, or `to_rgb8`'s refusals.
    """
    header = read_header(data, allowed_formats=allowed_formats, max_pixels=max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                rgb = to_rgb8(image)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"the image is corrupt or truncated ({error})") from None
    return DecodedImage(header, rgb)


def encode_png(image: Image.Image) -> bytes:
    """Encodes a Pillow image as PNG bytes (lossless)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def model_bytes(data: bytes, decoded: DecodedImage) -> bytes:
    """What to give the serving graph for `data`: the file itself when the graph decodes it
    to `decoded.rgb`, else a lossless PNG of `decoded.rgb`."""
    return data if decoded.header.model_native else encode_png(decoded.rgb)
