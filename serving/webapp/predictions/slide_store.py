"""Where the web app keeps slides: uploads streamed to disk and renamed into place, picks
from the configured slide folder (never outside it), each checked by the slide reader.

- An upload arrives in `<HISTOPATH_SLIDE_DIR>/incoming/<random>.part`, written chunk by
  chunk (`IncomingSlide`: never whole in memory, at most `HISTOPATH_MAX_SLIDE_BYTES`),
  is checked by the content (`histopath.slides.open_slide`: a PNG renamed `.svs` or a
  truncated file is refused with the reader's reason) and only then renamed to
  `<HISTOPATH_SLIDE_DIR>/uploads/<random><ext>`; a refused upload is deleted.
- A folder slide is a path relative to `HISTOPATH_SLIDE_ROOT`; `..`, absolute paths and
  symbolic links leading out of the folder are refused.
- `HISTOPATH_SLIDE_ROOT` may also be a URI (`gs://bucket/prefix`, any scheme `tf.io.gfile`
  knows): it is listed through `histopath.fileio`, and a picked slide is copied like an
  upload (chunk by chunk to `incoming/`, the same check, renamed into `uploads/`), because
  OpenSlide and the Deep Zoom viewer need a local file.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import secrets
from typing import Optional

from django.conf import settings

from histopath import fileio, slides

CHUNK_BYTES = 1024 * 1024
UPLOAD_EXTENSIONS = slides.SLIDE_EXTENSIONS + slides.TIFF_EXTENSIONS
MAX_LISTED = 500  # slides listed from the slide folder


class SlideRefused(Exception):
    """The file is not a slide this app can use; the message is for the user."""


class TooLarge(SlideRefused):
    """The upload is larger than `HISTOPATH_MAX_SLIDE_BYTES`."""


def slide_dir() -> pathlib.Path:
    return pathlib.Path(settings.HISTOPATH_SLIDE_DIR)


def limit_text() -> str:
    """The upload limit, as the user reads it."""
    limit = settings.HISTOPATH_MAX_SLIDE_BYTES
    return f"{limit / 1024**3:.1f} GiB" if limit >= 1024**3 else f"{limit / 1024**2:.1f} MiB"


def suffix_of(name: str) -> str:
    """The slide extension of an upload's name (lower case).

    Raises:
      SlideRefused: a name without a slide extension (OpenSlide reads by format, and the
        extension chooses the reader for some).
    """
    suffix = pathlib.PurePath(name or "").suffix.lower()
    if suffix not in UPLOAD_EXTENSIONS:
        raise SlideRefused(f"“{(name or '')[:200]}” is not a slide file name (one of "
                           f"{', '.join(UPLOAD_EXTENSIONS)})")
    return suffix


class IncomingSlide:
    """An upload being written to `incoming/`: `write` chunks, then `keep` or `discard`.

    Args:
      limit: the most bytes accepted (`TooLarge` beyond).
    """

    def __init__(self, limit: Optional[int] = None):
        self.limit = settings.HISTOPATH_MAX_SLIDE_BYTES if limit is None else limit
        folder = slide_dir() / "incoming"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{secrets.token_hex(16)}.part"
        self._file = open(self.path, "xb")  # noqa: SIM115  (closed by keep/discard)
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Appends a chunk.

        Raises:
          TooLarge: past the limit (the file is deleted).
        """
        self.size += len(chunk)
        if self.size > self.limit:
            self.discard()
            raise TooLarge(f"The slide is larger than the limit of {limit_text()}.")
        self._file.write(chunk)
        self._digest.update(chunk)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def discard(self) -> None:
        """Deletes the partial file (idempotent)."""
        self.close()
        self.path.unlink(missing_ok=True)

    def keep(self, name: str, mpp: Optional[float] = None) -> pathlib.Path:
        """Checks the complete upload by its content and renames it into `uploads/`.

        Args:
          name: the name the browser gave (its extension chooses the reader).
          mpp: the user's microns per pixel for a file that does not say.

        Returns:
          The slide's path.

        Raises:
          SlideRefused: an empty file, a name without a slide extension, or content the
            slide reader refuses (the message quotes the user's file name, not ours).
        """
        self.close()
        try:
            suffix = suffix_of(name)
            if self.size == 0:
                raise SlideRefused(f"“{name[:200]}” is empty")
            final = slide_dir() / "uploads" / f"{self.path.stem}{suffix}"
            final.parent.mkdir(parents=True, exist_ok=True)
            checked = self.path.with_name(final.name)  # readers choose by the extension
            os.replace(self.path, checked)
            self.path = checked
            check_slide(checked, name, mpp)
            os.replace(checked, final)
            self.path = final
            return final
        except BaseException:
            self.discard()
            raise


def sweep_incoming(now: Optional[float] = None) -> int:
    """Deletes what uploads cut short left in `incoming/` (a killed process): files not
    written to for longer than an upload may take (`HISTOPATH_SLIDE_BODY_TIMEOUT`, plus a
    minute). Returns how many."""
    import time

    folder = slide_dir() / "incoming"
    cutoff = (time.time() if now is None else now) - settings.HISTOPATH_SLIDE_BODY_TIMEOUT - 60
    removed = 0
    for path in folder.glob("*") if folder.is_dir() else []:
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another process swept it first
            continue
    return removed


def check_slide(path: pathlib.Path, shown_name: str, mpp: Optional[float] = None) -> dict:
    """Opens `path` with the slide reader and returns its description.

    Raises:
      SlideRefused: the reader's reason, with `shown_name` in place of the server's path.
    """
    try:
        with slides.open_slide(str(path), mpp=mpp) as slide:
            if slide.backend != "openslide":
                raise SlideRefused(f"“{shown_name[:200]}” is read by {slide.backend}, not OpenSlide: "
                                   "the viewer cannot show it")
            return slide.describe()
    except slides.SlideError as error:
        message = str(error).replace(str(path), f"“{shown_name[:200]}”")
        if "does not say its microns per pixel" in message:
            message = (f"“{shown_name[:200]}”: the file does not say its microns per pixel; give them in the "
                       "form (e.g. 0.25 for a 40x scan, 0.5 for 20x)")
        raise SlideRefused(message) from None


def root_uri() -> Optional[str]:
    """The configured slide root when it is a URI (`gs://bucket/prefix`, no trailing `/`),
    or None."""
    root = settings.HISTOPATH_SLIDE_ROOT
    return root.rstrip("/") if root and fileio.is_uri(root) else None


def has_root() -> bool:
    """Whether a slide folder or bucket is configured."""
    return bool(settings.HISTOPATH_SLIDE_ROOT)


def slide_root() -> Optional[pathlib.Path]:
    """The configured local slide folder (resolved), or None (none, or a URI)."""
    root = settings.HISTOPATH_SLIDE_ROOT
    return pathlib.Path(root).resolve() if root and not fileio.is_uri(root) else None


def _relative_parts(relative: str) -> pathlib.PurePosixPath:
    """`relative` as a path inside the root.

    Raises:
      SlideRefused: empty, absolute, with `..` or a NUL character.
    """
    parts = pathlib.PurePosixPath(relative.replace("\\", "/"))
    if not relative or parts.is_absolute() or ".." in parts.parts or "\x00" in relative:
        raise SlideRefused(f"“{relative[:200]}” is not a slide of the slide folder")
    return parts


def _unreadable(uri: str, error: Exception) -> SlideRefused:
    reason = getattr(error, "message", "") or str(error) or "not found or not allowed"
    return SlideRefused(f"The slide folder “{uri}” cannot be read ({type(error).__name__}: {reason[:300]})")


def uri_in_root(relative: str) -> str:
    """The URI of the slide `relative` names under the URI root.

    Raises:
      SlideRefused: as `in_root`, and when the bucket cannot be read (naming the URI).
    """
    root = root_uri()
    if root is None:
        raise SlideRefused("No slide bucket is configured on this server.")
    relative = (relative or "").strip()
    parts = _relative_parts(relative)
    uri = f"{root}/{parts.as_posix()}"
    if not uri.startswith(root + "/"):
        raise SlideRefused(f"“{relative[:200]}” is not a slide of the slide folder")
    suffix_of(parts.name)
    try:
        found = fileio.exists(uri) and not fileio.isdir(uri)
    except Exception as error:  # noqa: BLE001  (tf.errors.OpError and the file system's own)
        raise _unreadable(uri, error) from None
    if not found:
        raise SlideRefused(f"“{relative[:200]}” is not in the slide folder")
    return uri


def fetch_from_root(relative: str, mpp: Optional[float] = None) -> tuple[pathlib.Path, str]:
    """Copies the slide `relative` names under the URI root into `uploads/`, exactly like an
    upload: chunk by chunk to `incoming/<random>.part` (never whole in memory, at most
    `HISTOPATH_MAX_SLIDE_BYTES`), checked by its content, renamed into place.

    Returns:
      The local slide's path and its SHA-256.

    Raises:
      SlideRefused: a name outside the root, a missing file, content the slide reader
        refuses (quoting `relative`), or a bucket that cannot be read (naming the URI).
    """
    uri = uri_in_root(relative)
    import tensorflow as tf

    incoming = IncomingSlide()
    try:
        with tf.io.gfile.GFile(uri, "rb") as source:
            while chunk := source.read(CHUNK_BYTES):
                incoming.write(chunk)
    except SlideRefused:
        raise
    except Exception as error:  # noqa: BLE001  (tf.errors.OpError and the file system's own)
        incoming.discard()
        raise _unreadable(uri, error) from None
    path = incoming.keep(relative.strip(), mpp)
    return path, incoming.sha256


def pick(relative: str, mpp: Optional[float] = None) -> tuple[pathlib.Path, str]:
    """The local path of a picked slide (checked) and its SHA-256 ("" for a local folder's
    slide, which is read in place); a URI root's slide is copied in first.

    Raises:
      SlideRefused: see `in_root` and `fetch_from_root`.
    """
    if root_uri() is not None:
        return fetch_from_root(relative, mpp)
    path = in_root(relative)
    check_slide(path, relative, mpp)
    return path, ""


def in_root(relative: str) -> pathlib.Path:
    """The slide `relative` names inside `HISTOPATH_SLIDE_ROOT`.

    Raises:
      SlideRefused: no slide folder configured; an absolute path, `..`, or a link that
        leads outside it; a missing file or one without a slide extension.
    """
    root = slide_root()
    if root is None:
        raise SlideRefused("No slide folder is configured on this server.")
    relative = (relative or "").strip()
    parts = _relative_parts(relative)
    path = (root / parts).resolve()
    if not path.is_relative_to(root):
        raise SlideRefused(f"“{relative[:200]}” is not a slide of the slide folder")
    if not path.is_file():
        raise SlideRefused(f"“{relative[:200]}” is not in the slide folder")
    suffix_of(path.name)
    return path


def folder_slides() -> list[str]:
    """Slide files under `HISTOPATH_SLIDE_ROOT` (relative, sorted, at most `MAX_LISTED`).

    Raises:
      SlideRefused: a URI root that cannot be read or does not exist (naming the URI).
    """
    uri = root_uri()
    if uri is not None:
        import tensorflow as tf

        try:
            tf.io.gfile.listdir(uri)  # raises the file system's reason, which walk() would swallow
            names = fileio.walk_files(uri)
        except Exception as error:  # noqa: BLE001  (tf.errors.OpError and the file system's own)
            raise _unreadable(uri, error) from None
        return [name for name in names if pathlib.PurePosixPath(name).suffix.lower() in UPLOAD_EXTENSIONS
                and not any(part.startswith(".") for part in name.split("/"))][:MAX_LISTED]
    root = slide_root()
    if root is None or not root.is_dir():
        return []
    found = []
    for folder, directories, files in os.walk(root):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        for name in sorted(files):
            if pathlib.PurePath(name).suffix.lower() in UPLOAD_EXTENSIONS and not name.startswith("."):
                found.append(str(pathlib.Path(folder, name).relative_to(root)))
                if len(found) >= MAX_LISTED:
                    return found
    return found
