"""The viewer's disk cache and its safe file lookup.

Results live in ``<root>/<checkpoint hash>/<kind>/<key>/``: a ``result.json`` and the PNG files it names.
``<checkpoint hash>`` is the first 16 hex digits of the SHA-256 of the checkpoint file, and ``<key>`` the
first 16 hex digits of the SHA-256 of the canonical JSON of the computation's parameters, so a result is
found again after a restart and never mixed up between checkpoints or settings. Uploaded images live in
``<root>/uploads/<sha256 of the decoded image>.png``.

:func:`resolve_inside` is the only way the viewer turns a URL path into a file: it refuses ``..``,
absolute paths, backslashes, NUL bytes and anything (a symlink included) that resolves outside the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["Cache", "FileRefused", "default_cache_dir", "file_sha256", "params_key", "resolve_inside"]

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


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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

    def served_file(self, relative: str) -> Path:
        """A result file for ``/files/<relative>`` (see :func:`resolve_inside`)."""
        return resolve_inside(self.results, relative)
