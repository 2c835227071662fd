"""The viewer's disk cache and its safe file lookup.

Results live in ``<root>/<checkpoint hash>/<kind>/<key>/``: a ``result.json`` and the PNG files it names.
``<checkpoint hash>`` is the first 16 hex digits of the SHA-256 of the checkpoint file, and ``<key>`` the
first 16 hex digits of the SHA-256 of the canonical JSON of the computation's parameters, so a result is
found again after a restart and never mixed up between checkpoints or settings. Uploaded images live in
``<root>/uploads/<sha256 of the decoded image>.png``.

:func:`resolve_inside` is the only way the viewer turns a URL path into a file: it refuses ``..``,
absolute paths, backslashes, NUL bytes and anything (a symlink included) that resolves outside the folder;
:func:`read_regular` then opens it with ``O_NOFOLLOW`` and serves it only if ``fstat`` says it is a regular
file. Uploads are never served through a symlink at all. Every file is written atomically
(:func:`netvis.io.atomic_write_bytes`); temporary files that a killed process left behind are removed
when the cache is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Any

from netvis.io import atomic_write_bytes

__all__ = ["Cache", "FileRefused", "default_cache_dir", "file_sha256", "params_key", "read_regular",
           "resolve_inside"]

MAX_SERVED_BYTES = 64 * 1024 * 1024

_HEX = re.compile(r"^[0-9a-f]{16}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class FileRefused(Exception):
    """A requested path is not served: ``status`` is 404 (no such file) or 403 (outside the folder)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/netvis/serve`` (``~/.cache/netvis/serve`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "netvis" / "serve"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def params_key(params: dict[str, Any]) -> str:
    """16 hex digits identifying ``params`` (canonical JSON: sorted keys, no spaces)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def resolve_inside(root: str | os.PathLike, relative: str) -> Path:
    """The regular file ``relative`` names inside ``root``, or :class:`FileRefused`.

    ``relative`` is a URL path tail, already percent-decoded. Refused with 403: an empty or absolute path,
    a ``.``/``..``/empty segment, a backslash, a drive letter or a NUL byte, and a path whose real location
    (symlinks resolved) is outside ``root``. Refused with 404: a missing file or a folder.
    """
    if not relative or "\x00" in relative or "\\" in relative:
        raise FileRefused(403, "path refused")
    if relative.startswith("/") or re.match(r"^[A-Za-z]:", relative):
        raise FileRefused(403, "absolute paths are refused")
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise FileRefused(403, "path segments '.', '..' and empty ones are refused")
    base = Path(root).resolve()
    candidate = base.joinpath(*parts)
    try:
        real = candidate.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise FileRefused(404, "not found") from None
    except (OSError, RuntimeError):  # a symlink loop, a name too long
        raise FileRefused(404, "not found") from None
    if not real.is_relative_to(base):
        raise FileRefused(403, "outside the served folder")
    if not real.is_file():
        raise FileRefused(404, "not found")
    return real


def read_regular(path: str | os.PathLike, max_bytes: int = MAX_SERVED_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file reached without following a final symlink.

    Opened with ``O_NOFOLLOW`` (a symlink fails with ``ELOOP``) and checked with ``fstat`` on the open
    descriptor (no race between the check and the read).

    Raises:
        FileRefused: 404 for a missing file, a symlink, a folder, a device or FIFO, or a file over ``max_bytes``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        raise FileRefused(404, "not found") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            raise FileRefused(404, "not found")
        chunks, left = [], info.st_size
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def _remove_stale_temporaries(folder: Path, older_than: float = 3600.0) -> None:
    """Remove ``.<name>.*.tmp`` files that a killed writer left behind (older than ``older_than`` s)."""
    now = time.time()
    for tmp in folder.rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            if tmp.is_file() and not tmp.is_symlink() and now - tmp.stat().st_mtime > older_than:
                tmp.unlink()


class Cache:
    """Results of one checkpoint under ``root/<checkpoint hash>``, plus the shared uploads folder.

    Args:
        root: The cache folder (created).
        checkpoint_hash: Hex SHA-256 of the checkpoint file (its first 16 digits name the folder).
    """

    def __init__(self, root: str | os.PathLike, checkpoint_hash: str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.checkpoint_hash = checkpoint_hash
        self.results = self.root / checkpoint_hash[:16]
        self.uploads = self.root / "uploads"
        self.results.mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        _remove_stale_temporaries(self.results)
        _remove_stale_temporaries(self.uploads)

    def folder(self, kind: str, key: str) -> Path:
        """The folder of one result (not created)."""
        if not _NAME.match(kind) or not _HEX.match(key):
            raise ValueError(f"bad cache entry {kind!r}/{key!r}")
        return self.results / kind / key

    def url(self, kind: str, key: str, name: str) -> str:
        """The viewer URL of file ``name`` of a result."""
        return f"/files/{kind}/{key}/{name}"

    def load(self, kind: str, key: str) -> dict[str, Any] | None:
        """The stored ``result.json`` of an entry, or ``None`` when there is none (or it is unreadable)."""
        path = self.folder(kind, key) / "result.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def store(self, kind: str, key: str, result: dict[str, Any]) -> dict[str, Any]:
        """Write ``result.json`` of an entry atomically (its files must be written first); returns it."""
        data = json.dumps(result, sort_keys=True).encode("utf-8")
        _atomic_write(self.folder(kind, key) / "result.json", data)
        return result

    def write_file(self, kind: str, key: str, name: str, data: bytes) -> str:
        """Write one file of an entry atomically; returns its URL."""
        if not _NAME.match(name):
            raise ValueError(f"bad file name {name!r}")
        _atomic_write(self.folder(kind, key) / name, data)
        return self.url(kind, key, name)

    def upload_path(self, image_id: str) -> Path:
        """Where the upload ``image_id`` (16 hex digits) is stored."""
        if not _HEX.match(image_id):
            raise ValueError(f"bad image id {image_id!r}")
        return self.uploads / f"{image_id}.png"

    def store_upload(self, image_id: str, png: bytes) -> Path:
        """Store an upload's normalised PNG (idempotent)."""
        path = self.upload_path(image_id)
        with self._lock:
            if not path.exists():
                _atomic_write(path, png)
        return path

    def has_upload(self, image_id: str) -> bool:
        """Whether upload ``image_id`` is stored as a regular file (not a symlink)."""
        try:
            return stat.S_ISREG(os.lstat(self.upload_path(image_id)).st_mode)
        except (OSError, ValueError):
            return False

    def read_upload(self, image_id: str) -> bytes:
        """The stored PNG of upload ``image_id``: a regular file directly in the uploads folder, never reached
        through a symlink.

        Raises:
            FileRefused: 404 when there is no such regular file.
        """
        try:
            path = self.upload_path(image_id)
        except ValueError:
            raise FileRefused(404, "not found") from None
        if Path(os.path.realpath(path.parent)) != self.uploads:
            raise FileRefused(404, "not found")
        return read_regular(path)

    def served_file(self, relative: str) -> Path:
        """A result file for ``/files/<relative>`` (see :func:`resolve_inside`)."""
        return resolve_inside(self.results, relative)

    def read_served(self, relative: str) -> bytes:
        """The bytes of ``/files/<relative>`` (see :func:`resolve_inside` and :func:`read_regular`)."""
        return read_regular(resolve_inside(self.results, relative))
