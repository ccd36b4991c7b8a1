"""The one reading of whole-slide images: a pyramidal file in, regions of 8-bit RGB pixels
at a known scale out, or a refusal that names the file and says why.

Local files are read with OpenSlide (the `openslide-bin` wheel bundles the library: Aperio
SVS, Hamamatsu NDPI, MIRAX, Leica SCN, Ventana BIF, Philips, DICOM, generic tiled TIFF);
URIs with tiffslide, which reads only the byte ranges it needs (SVS, NDPI and generic TIFF):
through fsspec for the schemes it serves here (`memory://`, `s3://` with s3fs, ...), else
through TensorFlow's file systems (`gs://`, as every other URI of the project).
The single-file formats OpenSlide reads and tiffslide does not (Sakura `.svslide`, a
one-file DICOM `.dcm`) need a local file: from a URI they are copied to a temporary file
in `COPY_CHUNK_BYTES` chunks (never whole in memory), opened with OpenSlide and the copy
deleted when the slide closes. Multi-file formats (MIRAX `.mrxs`, Hamamatsu `.vms`/`.vmu`)
are refused from a URI: their data sit in files beside the one named.

- Microns per pixel come from the file (`openslide.mpp-x`, `tiffslide.mpp-x`, which both
  read Aperio's `MPP` and the TIFF resolution tags). A slide without them is refused unless
  the caller passes `mpp`: a tile in microns means nothing without them.
- Level 0 is never read whole: `read_region` reads a window, `thumbnail` walks the level
  nearest the requested size in bands and shrinks each band as it goes.
- Corrupt, truncated and non-slide files (a PNG renamed `.svs`) are refused with the file's
  name and the reason found in its header (`SlideError`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from histopath.errors import DataError

# File name endings `histopath predict` treats as slides (a .tif/.tiff is a slide when tiled).
SLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm")
TIFF_EXTENSIONS = (".tif", ".tiff")
THUMBNAIL_BAND_PIXELS = 16_000_000  # pixels of one band read while building a thumbnail
LOCAL_COPY_EXTENSIONS = (".svslide", ".dcm")  # one file, read by OpenSlide only: copied from a URI
MULTI_FILE_EXTENSIONS = (".mrxs", ".vms", ".vmu")  # data in files beside the one named
COPY_CHUNK_BYTES = 8 * 1024 * 1024  # bytes read at a time while copying a URI to a local file
_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
          b"BM": "a BMP image", b"%PDF": "a PDF document", b"PK\x03\x04": "a ZIP archive"}


class SlideError(DataError):
    """A file that cannot be read as a whole-slide image; the message names it."""


def is_uri(path: str) -> bool:
    """Whether `path` is a URI (`scheme://...`) rather than a local path."""
    return "://" in str(path)


def _header_kind(head: bytes) -> Optional[str]:
    """What the first bytes of a file say it is, for messages (None: a TIFF or unknown)."""
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def _is_tiff(head: bytes) -> bool:
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _tiff_problem(path: str) -> Optional[str]:
    """Why a local TIFF-based slide is damaged (truncated data, directories pointing past
    the end, unreadable structure), else None. Reads the directories only."""
    import logging

    import tifffile

    class _Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    collected, logger = _Collect(), logging.getLogger("tifffile")
    logger.addHandler(collected)
    propagate, logger.propagate = logger.propagate, False
    try:
        size = os.path.getsize(path)
        with tifffile.TiffFile(path) as tiff:
            end = 0
            for page in tiff.pages:
                offsets, counts = getattr(page, "dataoffsets", ()), getattr(page, "databytecounts", ())
                if len(offsets):
                    end = max(end, max(int(o) + int(c) for o, c in zip(offsets, counts)))
    except Exception as error:  # tifffile raises many kinds on damaged files
        return f"its TIFF structure is damaged ({error})"
    finally:
        logger.removeHandler(collected)
        logger.propagate = propagate
    if end > size:
        return f"it is truncated: {size:,} bytes, but its image data runs to byte {end:,}"
    if any("offset" in message for message in collected.messages):
        return f"it is truncated or damaged: a TIFF directory points past its {size:,} bytes"
    return None


def diagnose(path: str) -> str:
    """A reason, from the file's header, why `path` is not a readable slide."""
    if not is_uri(path):
        if not os.path.exists(path):
            return "no such file"
        if os.path.isdir(path):
            return "is a folder, not a slide file"
        with open(path, "rb") as stream:
            head = stream.read(16)
        if not head:
            return "the file is empty"
        kind = _header_kind(head)
        if kind:
            return f"it is {kind}, not a whole-slide image"
        if _is_tiff(head):
            return _tiff_problem(path) or "a TIFF file that is not a tiled slide OpenSlide can read"
    return "not a whole-slide image in a format OpenSlide or tiffslide reads (corrupt, truncated or another format)"


@dataclasses.dataclass(frozen=True)
class Level:
    """One pyramid level.

    Attributes:
      index: 0 is the full resolution.
      width, height: size in pixels.
      downsample: level-0 pixels per pixel of this level.
    """

    index: int
    width: int
    height: int
    downsample: float


def slide_id(path: str) -> str:
    """A slide's id: its file name without the extension (a folder slide: the folder's name).

    The one rule for the pipeline's records, `predict`'s outputs and the labels files.
    """
    return os.path.splitext(os.path.basename(str(path).rstrip("/")))[0]


class Slide:
    """An open whole-slide image (use as a context manager, or call `close`).

    Attributes:
      path: the file or URI, as given.
      slide_id: the file name without its extension.
      levels: the pyramid, level 0 first.
      mpp: microns per level-0 pixel (x, y).
      mpp_source: "file" or "caller".
      vendor: the format's vendor string ("aperio", "generic-tiff", ...), if known.
    """

    def __init__(self, path: str, handle: Any, backend: str, mpp: tuple[float, float], mpp_source: str,
                 stream: Optional[Any] = None):
        self.path = str(path)
        self.slide_id = slide_id(self.path)
        self._handle = handle
        self._stream = stream
        self.backend = backend
        self.mpp = mpp
        self.mpp_source = mpp_source
        props = handle.properties
        self.vendor = props.get(f"{backend}.vendor")
        self.levels = [Level(i, int(w), int(h), float(d)) for i, ((w, h), d) in
                       enumerate(zip(handle.level_dimensions, handle.level_downsamples))]

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.levels[0].width, self.levels[0].height

    def level_mpp(self, level: int) -> float:
        """Microns per pixel of `level` (the mean of x and y)."""
        return (self.mpp[0] + self.mpp[1]) / 2 * self.levels[level].downsample

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """Reads a window of `level` whose top-left is level-0 pixel (x, y).

        Transparent pixels (outside the scanned area) become white glass.

        Returns:
          uint8 array (height, width, 3).

        Raises:
          SlideError: the pixels cannot be decoded (a damaged or truncated file).
        """
        try:
            region = self._handle.read_region((int(x), int(y)), int(level), (int(width), int(height)))
        except Exception as error:  # OpenSlideError, tifffile/imagecodecs errors
            raise SlideError(f"{self.path}: cannot read the region at ({x}, {y}) of level {level} "
                             f"({type(error).__name__}: {error}); the file is damaged or truncated") from None
        return _rgba_on_white(region)

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most `downsample` (never coarser than
        asked, so the caller only shrinks); level 0 when `downsample` < 1."""
        best = 0
        for level in self.levels:
            if level.downsample <= downsample * 1.001:
                best = level.index
        return best

    def thumbnail(self, max_side: int) -> np.ndarray:
        """The whole slide shrunk so that its longer side is `max_side` pixels, aspect kept.

        Reads the level nearest the size in bands of rows (never a whole large level).

        Returns:
          uint8 array (h, w, 3) with max(h, w) == max_side (or less for a small slide).
        """
        width0, height0 = self.dimensions
        scale = min(1.0, max_side / max(width0, height0))
        out_w, out_h = max(1, round(width0 * scale)), max(1, round(height0 * scale))
        level = self.levels[self.best_level(1.0 / scale)]
        band_rows = max(1, THUMBNAIL_BAND_PIXELS // max(level.width, 1))
        out = np.empty((out_h, out_w, 3), np.uint8)
        done = 0
        for top in range(0, level.height, band_rows):
            rows = min(band_rows, level.height - top)
            band = self.read_region(0, round(top * level.downsample), level.index, level.width, rows)
            end = out_h if top + rows >= level.height else round((top + rows) * out_h / level.height)
            if end > done:
                shrunk = Image.fromarray(band).resize((out_w, end - done), Image.Resampling.BOX)
                out[done:end] = np.asarray(shrunk)
                done = end
        return out

    def close(self) -> None:
        """Releases the file."""
        self._handle.close()
        if self._stream is not None:
            self._stream.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict:
        """What a report says about the slide: id, size, levels, mpp and where it came from."""
        return {"slide": self.path, "slide_id": self.slide_id, "width": self.dimensions[0],
                "height": self.dimensions[1], "mpp": round((self.mpp[0] + self.mpp[1]) / 2, 6),
                "mpp_source": self.mpp_source, "vendor": self.vendor, "backend": self.backend,
                "levels": [[lv.width, lv.height] for lv in self.levels]}


def _rgba_on_white(region: Any) -> np.ndarray:
    array = np.asarray(region)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.shape[-1] == 4 and array[..., 3].min() < 255:
        alpha = array[..., 3:4].astype(np.float32) / 255.0
        rgb = array[..., :3].astype(np.float32)
        return np.rint(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(array[..., :3], dtype=np.uint8)


def _uri_stream(path: str) -> Optional[Any]:
    """A TensorFlow file object for a URI whose scheme fsspec cannot serve here (`gs://`
    without gcsfs), else None (fsspec opens it)."""
    import fsspec

    scheme = path.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(scheme)
        return None
    except (ImportError, ValueError):
        pass
    from histopath import fileio

    gfile = fileio._gfile()
    if not gfile.exists(path):
        raise SlideError(f"{path}: no such file")
    return gfile.GFile(path, "rb")


class _LocalCopy:
    """A temporary local copy of a URI's file, made in `COPY_CHUNK_BYTES` chunks (never
    whole in memory); `close` deletes it.

    Raises:
      SlideError: no such file.
    """

    def __init__(self, path: str):
        descriptor, self.name = tempfile.mkstemp(prefix="histopath-slide-", suffix=os.path.splitext(path)[1])
        try:
            with os.fdopen(descriptor, "wb") as copy:
                stream = _uri_stream(path)
                if stream is None:
                    import fsspec

                    stream = fsspec.open(path, "rb").open()
                with stream:
                    while True:
                        chunk = stream.read(COPY_CHUNK_BYTES)
                        if not chunk:
                            break
                        copy.write(chunk)
        except FileNotFoundError:
            self.close()
            raise SlideError(f"{path}: no such file") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name)


def _open_local_copy(path: str) -> tuple[Any, str, Optional[Any]]:
    """A URI of a format only OpenSlide reads, opened from a temporary local copy."""
    import openslide

    copy = _LocalCopy(path)
    try:
        return openslide.OpenSlide(copy.name), "openslide", copy
    except (openslide.OpenSlideError, OSError):
        reason = diagnose(copy.name)
        copy.close()
        raise SlideError(f"{path}: {reason}") from None
    except BaseException:
        copy.close()
        raise


def _open_handle(path: str) -> tuple[Any, str, Optional[Any]]:
    """(slide handle, backend name, stream or local copy to close with it)."""
    if is_uri(path) and path.lower().endswith(MULTI_FILE_EXTENSIONS):
        raise SlideError(f"{path}: a multi-file slide format (its data sit in files beside it) cannot be read "
                         "from a URI; copy the slide with its folder to a local disk and open it there")
    if is_uri(path) and path.lower().endswith(LOCAL_COPY_EXTENSIONS):
        return _open_local_copy(path)
    if is_uri(path):
        import tiffslide

        stream = _uri_stream(path)
        try:
            return tiffslide.TiffSlide(stream if stream is not None else path), "tiffslide", stream
        except FileNotFoundError:
            raise SlideError(f"{path}: no such file") from None
        except Exception:
            if stream is not None:
                stream.close()
            raise SlideError(f"{path}: {diagnose(path)}") from None
    import openslide

    try:
        return openslide.OpenSlide(path), "openslide", None
    except (openslide.OpenSlideError, OSError):
        raise SlideError(f"{path}: {diagnose(path)}") from None


def _file_mpp(handle: Any, backend: str) -> Optional[tuple[float, float]]:
    props = handle.properties
    try:
        mpp_x, mpp_y = float(props.get(f"{backend}.mpp-x")), float(props.get(f"{backend}.mpp-y"))
    except (TypeError, ValueError):
        return None
    return (mpp_x, mpp_y) if mpp_x > 0 and mpp_y > 0 else None


def open_slide(path: str | os.PathLike, mpp: Optional[float] = None) -> Slide:
    """Opens a whole-slide image, local or a URI.

    Args:
      path: a local file (OpenSlide) or a URI (tiffslide through fsspec or TensorFlow's
        file systems; `.svslide`/`.dcm` copied to a temporary local file in chunks for
        OpenSlide, the copy deleted on `close`).
      mpp: microns per level-0 pixel, for a slide whose file does not say; the file's own
        value wins over it when both exist, and a disagreement beyond 5 % is refused.

    Raises:
      SlideError: no such file, not a slide, damaged or truncated, or no microns per pixel.
    """
    path = os.fspath(path)
    if not is_uri(path):
        if not os.path.isfile(path):
            raise SlideError(f"{path}: {diagnose(path)}")
        with open(path, "rb") as stream:
            head = stream.read(16)
        if _is_tiff(head):
            problem = _tiff_problem(path)
            if problem:
                raise SlideError(f"{path}: {problem}")
    handle, backend, stream = _open_handle(path)
    try:
        found = _file_mpp(handle, backend)
        if mpp is not None and mpp <= 0:
            raise SlideError(f"{path}: microns per pixel must be positive, got {mpp}")
        if found is None and mpp is None:
            raise SlideError(f"{path}: the file does not say its microns per pixel (no MPP or resolution tags); "
                             "pass it (--mpp, e.g. 0.25 for a 40x scan, 0.5 for 20x)")
        if found is not None and mpp is not None and abs(found[0] - mpp) > 0.05 * found[0]:
            raise SlideError(f"{path}: the file says {found[0]:g} microns per pixel, the caller {mpp:g}")
        slide = Slide(path, handle, backend, found or (float(mpp), float(mpp)), "file" if found else "caller", stream)
        slide.read_region(0, 0, len(slide.levels) - 1, 1, 1)  # fails here on undecodable data
        return slide
    except BaseException:
        handle.close()
        if stream is not None:
            stream.close()
        raise


def looks_like_slide(path: str) -> bool:
    """Whether `histopath predict` treats a file as a slide: a slide extension, or a tiled
    TIFF (an untiled .tif stays an image)."""
    lower = str(path).lower()
    if lower.endswith(SLIDE_EXTENSIONS):
        return True
    if not lower.endswith(TIFF_EXTENSIONS) or is_uri(path):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            return bool(tiff.pages[0].is_tiled)
    except Exception:  # unreadable: the image path reports it by name
        return False

