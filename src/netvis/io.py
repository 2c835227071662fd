"""Files in and out: atomic writes and image reading with size limits.

Writes
======
Every file netvis writes goes through :func:`atomic_write` (or its ``bytes``/``text``/``torch.save``
wrappers): the data goes into a temporary file in the destination's folder (so the final rename cannot
cross file systems), which is flushed, ``fsync``\\ ed and renamed over the destination with
:func:`os.replace`. Readers see either the old file or the new one, never a half-written one, and when
anything fails (a full disk, a read-only folder, an interrupt) the temporary file is removed and the
destination is untouched. A full disk (``ENOSPC``, ``EDQUOT``) is reported as :class:`DiskFullError`,
whose message is ``no space left on <path>``.

Images
======
:func:`read_image` decodes one PNG or JPEG image (a path or the bytes of a file) and refuses everything
else with an :class:`ImageReadError` whose message names the problem: an empty file, another format
(TIFF, ICO, GIF, BMP, WebP, SVG, ...), a truncated or corrupt file (a PNG is ``verify()``-ed, which
checks every chunk's CRC up to ``IEND``, so a file cut short is refused rather than half-read), and an
image with more than ``max_pixels`` pixels (:class:`ImageTooLarge`), which is checked from the header
*before* the pixels are decoded, so a decompression bomb costs nothing.

>>> import io as _io, numpy as np
>>> from PIL import Image
>>> buffer = _io.BytesIO(); Image.fromarray(np.zeros((4, 6), np.uint8)).save(buffer, "PNG")
>>> read_image(buffer.getvalue()).size
(6, 4)
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_FORMATS",
    "DiskFullError",
    "ImageReadError",
    "ImageTooLarge",
    "atomic_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_image",
]

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest image :func:`read_image` decodes by default (width times height)."""

IMAGE_FORMATS = ("PNG", "JPEG")
"""The image formats netvis reads (Pillow's names; multi-picture JPEG files, ``MPO``, count as JPEG)."""

_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write failed because the disk (or the user's quota) is full: ``no space left on <path>``."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(errno.ENOSPC, f"no space left on {os.fspath(path)}")
        self.filename = os.fspath(path)

    def __str__(self) -> str:
        return self.strerror or ""


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (ignored where folders cannot be opened or synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], *, mode: int = 0o644) -> Path:
    """Replace ``path`` atomically with what ``write(handle)`` writes to a binary file handle.

    Args:
        path: The destination; its folder is created when missing.
        write: Fills the temporary file, e.g. ``lambda f: f.write(data)``.
        mode: Permission bits of the new file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DiskFullError: the disk or quota is full (nothing is left behind).
        OSError: any other failure (a read-only folder, ...), with ``filename`` set; nothing is left behind.
    """
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        if exc.errno in _FULL:
            raise DiskFullError(path) from exc
        if exc.filename is None:
            exc.filename = os.fspath(folder)
        raise
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, DiskFullError) and exc.errno in _FULL:
            raise DiskFullError(path) from exc
        if isinstance(exc, RuntimeError) and "No space left on device" in str(exc):  # torch.save's writer
            raise DiskFullError(path) from exc
        raise
    _fsync_dir(folder)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: handle.write(data), mode=mode)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", mode: int = 0o644) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode(encoding), mode=mode)


def atomic_save(obj: Any, path: str | os.PathLike, *, mode: int = 0o644) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: torch.save(obj, handle), mode=mode)


# ------------------------------------------------------------------------------------------------------
# images


class ImageReadError(ValueError):
    """An image cannot be read; ``status`` is the matching HTTP status (415, or 413 for too large)."""

    status = 415


class ImageTooLarge(ImageReadError):
    """An image has more pixels than allowed (checked from its header, before decoding)."""

    status = 413


_MAGIC = [
    (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"\x00\x00\x01\x00", "an ICO icon"),
    (b"GIF87a", "a GIF image"), (b"GIF89a", "a GIF image"), (b"BM", "a BMP image"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"), (b"8BPS", "a Photoshop file"), (b"%PDF", "a PDF file"),
    (b"qoif", "a QOI image"), (b"P1", "a PBM image"), (b"P4", "a PBM image"), (b"P2", "a PGM image"),
    (b"P5", "a PGM image"), (b"P3", "a PPM image"), (b"P6", "a PPM image"),
]
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")


def _describe(data: bytes) -> str:
    """What the bytes of a file that is not PNG/JPEG look like (for the error message)."""
    head = data[:512].lstrip()
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a WebP image"
    if head.startswith(b"<?xml") or head.startswith(b"<svg") or b"<svg" in head[:512]:
        return "an SVG (vector) image"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return "not an image"


def _clean(message: str) -> str:
    """A Pillow message without object reprs such as ``<_io.BytesIO object at 0x7f...>``."""
    return _REPR.sub("", message).strip() or "unreadable data"


def read_image(
    source: str | os.PathLike | bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] = IMAGE_FORMATS,
    draft: tuple[str, tuple[int, int]] | None = None,
) -> Image.Image:
    """Decode one image file (a path or its bytes), refusing anything that is not a sound PNG/JPEG.

    The header is read first: the format must be one of ``formats`` and ``width * height`` at most
    ``max_pixels`` (:class:`ImageTooLarge` otherwise, before any pixel is decoded). A PNG is then
    ``verify()``-ed (every chunk's CRC, up to ``IEND``) and decoded; truncated or corrupt data is refused.

    Args:
        source: A file path, or the bytes of an image file.
        max_pixels: Largest accepted ``width * height``; ``None``: Pillow's own bomb limit only.
        formats: Accepted Pillow format names (default PNG and JPEG).
        draft: ``(mode, (width, height))`` passed to :meth:`PIL.Image.Image.draft` for JPEG files, which
            then decode at the smallest power-of-two scale that keeps at least that size (less memory).

    Returns:
        The decoded image (loaded, detached from any file); ``image.format`` is its format.

    Raises:
        ImageTooLarge: more than ``max_pixels`` pixels, or a decompression bomb.
        ImageReadError: empty, another format, truncated or corrupt; the message says which.
        OSError: a path that cannot be read (missing, a folder, no permission), with ``filename`` set.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        with open(source, "rb") as handle:
            data = handle.read()
    if not data:
        raise ImageReadError("empty file: not an image")
    accepted = tuple(formats) + (("MPO",) if "JPEG" in formats else ())
    names = " or ".join(formats)
    fmt = ""
    try:
        with Image.open(io.BytesIO(data), formats=[f for f in accepted if f != "MPO"]) as image:
            fmt = image.format
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(f"image too large: {width} x {height} pixels (at most {max_pixels} pixels)")
            if fmt == "PNG":
                image.verify()
        if fmt not in accepted:
            raise ImageReadError(f"{fmt} images are not read; use {names}")
        image = Image.open(io.BytesIO(data), formats=[fmt if fmt != "MPO" else "JPEG"])
        if draft is not None and fmt in ("JPEG", "MPO"):
            image.draft(*draft)
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image too large: {_clean(str(exc))}") from None
    except UnidentifiedImageError:
        kind = _describe(data)
        if data.startswith(_PNG_MAGIC):
            raise ImageReadError("corrupt PNG image") from None
        if data.startswith(_JPEG_MAGIC):
            raise ImageReadError("corrupt JPEG image") from None
        if kind == "not an image":
            raise ImageReadError(f"not a {names} image") from None
        raise ImageReadError(f"{kind}, not {names}") from None
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError) as exc:
        what = f"{fmt} image" if fmt else "image"
        raise ImageReadError(f"truncated or corrupt {what}: {_clean(str(exc))}") from None
    return image
