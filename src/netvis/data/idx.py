"""Read and write IDX files, the format of MNIST and Fashion-MNIST, raw or gzip-compressed.

An IDX file is a 4-byte magic number, one big-endian ``uint32`` per dimension, then the array in C
order, big-endian. The magic number is two zero bytes, a type code and the number of dimensions:
``0x00000803`` is a 3-D ``uint8`` array (images, ``N x H x W``) and ``0x00000801`` a 1-D ``uint8``
array (labels). The format is described on Yann LeCun's MNIST page ("The MNIST database of
handwritten digits") and in the Fashion-MNIST paper (Xiao, Rasul and Vollgraf 2017, "Fashion-MNIST: a
Novel Image Dataset for Benchmarking Machine Learning Algorithms").

Every malformed file (bad gzip stream, wrong magic number, a size that disagrees with the header,
image and label files of different lengths) raises :class:`~netvis.data.errors.DataError` naming the
file.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x-images-idx3-ubyte.gz")
    >>> _ = write_idx(path, np.zeros((2, 3, 4), dtype=np.uint8))
    >>> read_idx_images(path).shape
    (2, 3, 4)
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from netvis.data.errors import DataError

__all__ = [
    "IMAGES_MAGIC",
    "LABELS_MAGIC",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "read_idx_pair",
    "write_idx",
]

IMAGES_MAGIC = 0x00000803
"""Magic number of a 3-D ``uint8`` IDX file (``N x H x W`` images)."""
LABELS_MAGIC = 0x00000801
"""Magic number of a 1-D ``uint8`` IDX file (``N`` labels)."""

# IDX type code -> big-endian numpy dtype.
_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """Return the file's content, decompressed when it is a gzip file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if data[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path} is not a valid gzip file (corrupt or truncated): {exc}") from exc
    if path.suffix == ".gz":
        raise DataError(f"{path} is named .gz but is not a gzip file (it does not start with 1f 8b)")
    return data


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read any IDX file into a native-byte-order numpy array.

    Args:
        path: The file, raw or gzip-compressed (detected from its first bytes, not its name).

    Returns:
        A writable array with the dimensions and element type of the header.

    Raises:
        DataError: The file is missing, not gzip although named ``.gz``, a corrupt gzip stream, has a
            bad magic number, or holds more or fewer bytes than its header announces. The message names
            ``path``.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(data)} bytes)")
    zero, code, ndim = data[0:2], data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero != b"\x00\x00" or code not in _TYPES or ndim == 0:
        raise DataError(f"{path} is not an IDX file: bad magic number 0x{magic:08x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path} is truncated: the header announces {ndim} dimensions but the file ends early"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "too long"
        raise DataError(
            f"{path} is {what}: header says shape {tuple(dims)} ({expected} data bytes) but the file holds "
            f"{actual} data bytes"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    # A copy makes the array writable (torch.from_numpy warns on read-only memory) and native-endian.
    return array.astype(dtype.newbyteorder("="), copy=True)


def _read_checked(path: str | os.PathLike, magic: int, what: str) -> np.ndarray:
    path = Path(path)
    array = read_idx(path)
    code = _CODES[array.dtype]
    found = (code << 8) | array.ndim
    if found != magic:
        raise DataError(
            f"{path} has magic number 0x{found:08x} but IDX {what} need 0x{magic:08x} "
            f"(uint8, {magic & 0xFF}-D); got a {array.ndim}-D {array.dtype} array"
        )
    return array


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX image file (magic ``0x00000803``).

    Args:
        path: The file, raw or gzip-compressed.

    Returns:
        ``uint8`` array shaped ``(N, H, W)``.

    Raises:
        DataError: As :func:`read_idx`, or the file is valid IDX but not 3-D ``uint8``.
    """
    return _read_checked(path, IMAGES_MAGIC, "image files")


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX label file (magic ``0x00000801``).

    Args:
        path: The file, raw or gzip-compressed.

    Returns:
        ``uint8`` array shaped ``(N,)``.

    Raises:
        DataError: As :func:`read_idx`, or the file is valid IDX but not 1-D ``uint8``.
    """
    return _read_checked(path, LABELS_MAGIC, "label files")


def read_idx_pair(
    images_path: str | os.PathLike, labels_path: str | os.PathLike, *, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read matching IDX image and label files and check that they agree.

    Args:
        images_path: IDX image file (``0x00000803``).
        labels_path: IDX label file (``0x00000801``).
        num_classes: If given, every label must be below it.

    Returns:
        ``(images, labels)``: ``uint8`` arrays shaped ``(N, H, W)`` and ``(N,)``.

    Raises:
        DataError: Either file is malformed, the counts differ, or a label is out of range; the message
            names the file(s).
    """
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path} holds {len(labels)} labels but {images_path} holds {len(images)} images"
        )
    if num_classes is not None and len(labels) and int(labels.max()) >= num_classes:
        raise DataError(
            f"{labels_path} has label {int(labels.max())}, but there are only {num_classes} classes"
        )
    return images, labels


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write an array as an IDX file, byte-for-byte reproducible.

    Args:
        path: Destination. Parent folders are created.
        array: Any array whose dtype IDX supports (``uint8``, ``int8``, ``int16``, ``int32``,
            ``float32``, ``float64``) with 1 to 255 dimensions.
        compress: gzip the file; by default when ``path`` ends in ``.gz``. The gzip header carries no
            time stamp, so rewriting the same array gives the same bytes.

    Returns:
        The path written.
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise TypeError(
            f"IDX cannot store dtype {array.dtype}; use one of uint8, int8, int16, int32, float32, float64"
        )
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX stores 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, _CODES[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=_TYPES[_CODES[native]]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        payload = gzip.compress(payload, compresslevel=9, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path
