"""netvis.io: atomic writes that leave nothing behind, and image reading that refuses what is not a sound
PNG/JPEG (checked against Pillow's own decoding of the good files)."""

from __future__ import annotations

import errno
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from netvis.io import (
    DiskFullError,
    ImageReadError,
    ImageTooLarge,
    atomic_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    read_image,
)


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


RGB = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    atomic_save({"x": torch.arange(3)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt")["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "sub", "t.pt"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_keeps_the_old_file_and_says_so(tmp_path, code):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def write(handle):
        handle.write(b"half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(DiskFullError) as info:
        atomic_write(target, write)
    assert str(info.value) == f"no space left on {target}" and info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def test_a_full_disk_inside_torch_save_is_reported_the_same(tmp_path, monkeypatch):
    def full(obj, handle):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed, No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError, match="no space left on"):
        atomic_save({"x": 1}, tmp_path / "t.pt")
    assert os.listdir(tmp_path) == []


def test_a_read_only_folder_is_an_oserror_naming_it(tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, dir=None, **kwargs):  # what a read-only folder answers (root ignores chmod)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as info:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert info.value.filename == str(tmp_path) and os.listdir(tmp_path) == []


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_png_and_jpeg_decode_as_pillow_decodes_them(tmp_path, fmt):
    data = encode(RGB, fmt)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    (tmp_path / "x").write_bytes(data)
    for source in (data, tmp_path / "x", str(tmp_path / "x")):
        image = read_image(source)
        assert image.format == fmt and image.size == (40, 24)
        assert np.array_equal(np.asarray(image.convert("RGB")), reference)


def test_jpeg_draft_decodes_at_a_reduced_scale():
    big = np.kron(RGB, np.ones((16, 16, 1), np.uint8))  # 384 x 640
    image = read_image(encode(big, "JPEG"), draft=("RGB", (80, 48)))
    assert image.size == (80, 48)


PNG = encode(RGB, "PNG")
JPEG = encode(RGB, "JPEG")


@pytest.mark.parametrize(("data", "fragment"), [
    (b"", "empty file"),
    (np.random.default_rng(1).bytes(600), "not a PNG or JPEG image"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>', "SVG"),
    (encode(RGB, "TIFF"), "TIFF"),
    (encode(RGB, "ICO"), "ICO"),
    (encode(RGB, "GIF"), "GIF"),
    (encode(RGB, "BMP"), "BMP"),
    (encode(RGB, "WEBP"), "WebP"),
    (PNG[: len(PNG) // 2], "truncated or corrupt PNG"),
    (PNG[:-12], "truncated or corrupt PNG"),  # every pixel there, only IEND missing
    (PNG[:60] + bytes(len(PNG) - 60), "PNG"),
    (JPEG[: len(JPEG) // 2], "truncated or corrupt JPEG"),
])
def test_what_is_not_a_sound_png_or_jpeg_is_refused_by_name(data, fragment):
    with pytest.raises(ImageReadError) as info:
        read_image(data)
    message = str(info.value)
    assert fragment in message and info.value.status == 415
    assert " at 0x" not in message and "BytesIO" not in message


def test_the_pixel_limit_is_checked_from_the_header_before_decoding(monkeypatch):
    data = encode(np.zeros((300, 200), np.uint8), "PNG")
    decoded = []
    original = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1) or original(self))
    with pytest.raises(ImageTooLarge, match=r"200 x 300 pixels \(at most 1000 pixels\)") as info:
        read_image(data, max_pixels=1000)
    assert info.value.status == 413 and decoded == []


def test_a_decompression_bomb_header_is_refused_without_decoding():
    # a valid PNG header that claims 100000 x 100000 pixels, followed by nothing
    import struct
    import zlib

    def chunk(name: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + name + body + struct.pack(">I", zlib.crc32(name + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000)))
    data += chunk(b"IEND", b"")
    for limit in (None, 10**6):
        with pytest.raises(ImageTooLarge, match="too large"):
            read_image(data, max_pixels=limit)


def test_a_missing_file_is_an_oserror_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        read_image(tmp_path / "missing.png")
    assert info.value.filename == str(tmp_path / "missing.png")
