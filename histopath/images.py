"""The one reading of an encoded image: bytes in, 8-bit RGB pixels as a pathologist means
them out, or a refusal that says why. Ingestion, `histopath predict`, the model server and
the web app all read images here.

- The header is read first (`read_header`): the format, the pixel count and the bytes
  the decoded pixels take (`ImageHeader.decoded_bytes`: bytes per sample x channels x
  pixels) are checked against the caller's limits before any pixel is decoded, so a
  decompression bomb, or a small file of 32-bit floats, costs nothing.
- Pixels are converted by their real range (`to_rgb8`), band by band (the conversion
  never holds more than a few rows in a wider type): 16-bit PNGs by their significant
  bits (the `sBIT` chunk, else the bits their values use: a 12-bit scanner image in a
  16-bit file is not read as nearly black), 32-bit integers keep the top 8 of the bits
  their values use, floats are scaled from [0, 1], [0, 255] or [0, 65535], grey and
  palette images become RGB, and transparent pixels become white glass. Pixel values that
  have no image meaning (negative, not finite) are refused.
- `model_bytes` gives the serving graph the file itself when it decodes it to the same
  pixels, and a lossless PNG of the converted pixels otherwise.
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from typing import Iterator

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
# The decoded pixels' bytes: the pixel limit's worth of 8-bit RGB. Wider samples (16-bit,
# 32-bit, float) get proportionally fewer pixels.
DEFAULT_MAX_DECODED_BYTES = 3 * DEFAULT_MAX_IMAGE_PIXELS
# Bytes per pixel of each Pillow mode's samples (dtype size x channels).
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
              "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4,
              "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
BAND_ROWS = 256  # rows converted at a time


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
    bits: int = 8  # bits per sample in the file (16 for a 16-bit PNG, whatever Pillow's mode)
    significant_bits: int | None = None  # a PNG's sBIT chunk: the bits the scanner wrote

    @property
    def model_native(self) -> bool:
        """Whether the serving graph decodes the file to the pixels `to_rgb8` gives."""
        return self.format in MODEL_NATIVE_FORMATS and self.mode in MODEL_NATIVE_MODES and self.bits <= 8

    @property
    def decoded_bytes(self) -> int:
        """The bytes the decoded samples take: bytes per sample x channels x pixels."""
        return self.width * self.height * _bytes_per_pixel(self.mode, self.bits)


def _bytes_per_pixel(mode: str, bits: int) -> int:
    if bits == 16 and mode in ("RGB", "RGBA", "LA", "L"):  # Pillow's 8-bit view of a 16-bit PNG
        return 2 * len(mode)
    return MODE_BYTES.get(mode, 4)


def _png_depth(data: bytes) -> tuple[int, int | None]:
    """(bits per sample, significant bits from `sBIT` or None) of a PNG, from the chunks
    before its first IDAT."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        return 8, None
    bits, colour_type = data[24], data[25]
    offset = 33  # signature 8 + IHDR (length 4, type 4, data 13, CRC 4)
    for _ in range(64):  # a few ancillary chunks at most come before the pixels
        if offset + 8 > len(data):
            break
        length, kind = int.from_bytes(data[offset:offset + 4], "big"), data[offset + 4:offset + 8]
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"sBIT":
            values = data[offset + 8:offset + 8 + min(length, 4)][:PNG_CHANNELS.get(colour_type, 1)]
            if colour_type in (4, 6):
                values = values[:-1]  # the alpha channel's
            significant = max(values, default=0)
            return bits, significant if 0 < significant <= bits else None
        offset += 12 + length
    return bits, None


def read_header(data: bytes, *, allowed_formats: tuple[str, ...] = ACCEPTED_FORMATS,
                max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES) -> ImageHeader:
    """Identifies an encoded image from its header, without decoding the pixels.

    Args:
      data: the encoded image.
      allowed_formats: Pillow format names accepted.
      max_pixels: most pixels (width x height).
      max_decoded_bytes: most bytes the decoded samples may take (`decoded_bytes`);
        None for no byte limit.

    Raises:
      ImageError: empty, not an image, a format outside `allowed_formats`, no pixels,
        more than `max_pixels` or more than `max_decoded_bytes` once decoded.
    """
    if not data:
        raise ImageError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                header = ImageHeader(image.format or "", int(image.width), int(image.height), image.mode)
    except Image.DecompressionBombError as error:  # beyond Pillow's own guard: say ours
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise ImageError(f"the image is too large to decode safely ({size}, more than the limit of "
                         f"{max_pixels:,} pixels)") from None
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
    if header.format == "PNG":
        bits, significant = _png_depth(data)
        header = dataclasses.replace(header, bits=bits, significant_bits=significant)
    if max_decoded_bytes is not None and header.decoded_bytes > max_decoded_bytes:
        raise ImageError(f"the image is {header.width}x{header.height} pixels of {header.mode} "
                         f"({header.decoded_bytes / 1e6:,.0f} MB once decoded), more than the limit of "
                         f"{max_decoded_bytes / 1e6:,.0f} MB of decoded pixels")
    return header


def _bands(source: np.ndarray | Image.Image) -> Iterator[tuple[int, int, np.ndarray]]:
    """(top, bottom, rows) of `source` in bands of `BAND_ROWS` rows; a Pillow image's rows
    are copied one band at a time, never all at once."""
    if isinstance(source, Image.Image):
        width, height = source.size
        for top in range(0, height, BAND_ROWS):
            bottom = min(height, top + BAND_ROWS)
            yield top, bottom, np.asarray(source.crop((0, top, width, bottom)))
        return
    for top in range(0, source.shape[0], BAND_ROWS):
        yield top, min(source.shape[0], top + BAND_ROWS), source[top:top + BAND_ROWS]


def _shape(source: np.ndarray | Image.Image) -> tuple[int, ...]:
    return (source.size[1], source.size[0]) if isinstance(source, Image.Image) else source.shape


def _integers_to_8bit(source: np.ndarray | Image.Image, bits: int | None) -> np.ndarray:
    """Keeps the top 8 of `bits` bits; `bits` None: as many bits as the largest value uses.
    Works band by band: no full-size copy in a wider type."""
    low, high = 0, 0
    for _, _, band in _bands(source):
        if band.size:
            low, high = min(low, int(band.min())), max(high, int(band.max()))
    if low < 0:
        raise ImageError(f"the image has negative pixel values (down to {low})")
    if bits is None:
        bits = max(8, high.bit_length())
    out = np.empty(_shape(source), np.uint8)
    for top, bottom, band in _bands(source):
        out[top:bottom] = np.minimum(band >> (bits - 8), 255) if bits > 8 else band
    return out


def _floats_to_8bit(source: np.ndarray | Image.Image) -> np.ndarray:
    low, high = 0.0, 0.0
    for _, _, band in _bands(source):
        if not np.all(np.isfinite(band)):
            raise ImageError("the image has pixel values that are not finite numbers")
        if band.size:
            low, high = min(low, float(band.min())), max(high, float(band.max()))
    if low < 0:
        raise ImageError(f"the image has negative pixel values (down to {low:g})")
    for limit in (1.0, 255.0, 65535.0):
        if high <= limit:
            out = np.empty(_shape(source), np.uint8)
            for top, bottom, band in _bands(source):
                out[top:bottom] = np.clip(np.round(band * np.float32(255.0 / limit)), 0, 255)
            return out
    raise ImageError(f"a floating-point image with values up to {high:g}: its range is unknown")


def _sixteen_bit_bits(values: np.ndarray, significant_bits: int | None) -> int:
    """The bits a 16-bit image's samples use: the sBIT chunk's, else the largest value's."""
    if significant_bits:
        return max(8, significant_bits)
    return max(8, int(values.max()).bit_length() if values.size else 8)


def to_rgb8(image: Image.Image) -> Image.Image:
    """Converts a decoded Pillow image to 8-bit RGB by its real range.

    A 16-bit grey image uses `image.info["significant_bits"]` (a PNG's sBIT) when present,
    else the bits its values use.

    Raises:
      ImageError: values with no image meaning (negative, not finite, floats beyond 65535).
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I;16"):
        values = np.asarray(image)
        grey = _integers_to_8bit(values, _sixteen_bit_bits(values, image.info.get("significant_bits")))
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "I":  # 32-bit integers by the bits their values use
        return Image.fromarray(_integers_to_8bit(image, None), mode="L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_floats_to_8bit(image), mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return _on_white(image.convert("RGBA"))
    return image.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


def _on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # see-through = glass
    return Image.alpha_composite(white, rgba).convert("RGB")


def _sixteen_bit_colour_png(data: bytes, header: ImageHeader) -> Image.Image:
    """A 16-bit colour (or grey + alpha) PNG at full depth: Pillow would keep only the high
    byte of each sample. Decoded with TensorFlow's PNG decoder (imported only here)."""
    import histopath  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf

    try:
        samples = tf.io.decode_png(data, channels=0, dtype=tf.uint16).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        raise ImageError(f"the image is corrupt or truncated ({error.message.splitlines()[0]})") from None
    channels = samples.shape[-1]
    colour = samples[..., :3] if channels >= 3 else samples[..., :1]
    bits = _sixteen_bit_bits(colour, header.significant_bits)
    eight = _integers_to_8bit(colour, bits)
    del colour
    mode = "RGB" if channels >= 3 else "L"
    image = Image.fromarray(eight if mode == "RGB" else eight[..., 0], mode=mode)
    if channels in (2, 4):  # alpha: by the file's own depth
        alpha = Image.fromarray(_integers_to_8bit(samples[..., -1], 16), mode="L")
        image = image.convert("RGBA")
        image.putalpha(alpha)
        return _on_white(image)
    return image.convert("RGB")


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
           max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
           max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES) -> DecodedImage:
    """Reads the header, decodes every pixel (catching truncated files) and converts to RGB.

    Raises:
      ImageError: as `read_header`, a corrupt or truncated file, or `to_rgb8`'s refusals.
    """
    header = read_header(data, allowed_formats=allowed_formats, max_pixels=max_pixels,
                         max_decoded_bytes=max_decoded_bytes)
    if header.format == "PNG" and header.bits == 16 and not header.mode.startswith("I;16"):
        return DecodedImage(header, _sixteen_bit_colour_png(data, header))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                if header.significant_bits:
                    image.info["significant_bits"] = header.significant_bits
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
