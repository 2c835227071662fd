"""The command line's errors: one line `netvis: error: <file>: <problem>`, exit status 2 for usage and 1 at run
time, no traceback unless --debug, and no partial files left behind."""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from netvis.app.cli import main

CHECKPOINT = "fashion-mnist-small"


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def chunk(name: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + name + body + struct.pack(">I", zlib.crc32(name + body))


GOOD = png(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
BOMB = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(10_000))) + chunk(b"IEND", b""))
BAD_IMAGES = {
    "random.png": (np.random.default_rng(1).bytes(700), "not a PNG or JPEG image"),
    "empty.png": (b"", "empty file"),
    "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>', "SVG"),
    "half.png": (GOOD[: len(GOOD) // 2], "truncated or corrupt PNG"),
    "no-end.png": (GOOD[:-12], "truncated or corrupt PNG"),  # all pixels there, IEND missing
    "bomb.png": (BOMB, "too large"),
    "scan.tiff": (None, "TIFF"),
}


def one_line_error(result, status: int) -> str:
    assert result.exit_code == status, (result.exit_code, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netvis: error: "), result.output
    assert "Traceback" not in result.output
    return lines[0].removeprefix("netvis: error: ")


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_an_unreadable_image_is_one_line_naming_the_file(tmp_path, name):
    data, fragment = BAD_IMAGES[name]
    path = tmp_path / name
    if data is None:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(path, format="TIFF")
    else:
        path.write_bytes(data)
    out = tmp_path / "out"
    for command in (["saliency", CHECKPOINT, str(path), "--method", "gradient"],
                    ["invert", CHECKPOINT, str(path), "--layer", "layer1", "--steps", "1"]):
        result = CliRunner().invoke(main, [*command, "--out", str(out), "--no-progress"])
        message = one_line_error(result, 1)
        assert message.startswith(f"{path}: ") and fragment in message, message
        assert not out.exists() or list(out.iterdir()) == []


def test_a_missing_image_is_one_line(tmp_path):
    missing = tmp_path / "missing.png"
    result = CliRunner().invoke(main, ["saliency", CHECKPOINT, str(missing), "--out", str(tmp_path / "o"),
                                       "--method", "gradient", "--no-progress"])
    assert str(missing) in one_line_error(result, 1)


@pytest.mark.parametrize("command", [
    ["evaluate", CHECKPOINT, "--batch-size", "0"],
    ["examples", CHECKPOINT, "--layer", "layer1", "--batch-size", "0"],
    ["train", "--out", "x", "--model", "resnet20_cifar", "--data", "fashion-mnist-sample", "--epochs", "1",
     "--batch-size", "0"],
    ["saliency", CHECKPOINT, "sample:1", "--out", "x", "--batch-size", "0"],
    ["examples", CHECKPOINT, "--layer", "layer1", "--k", "0"],
    ["evaluate", CHECKPOINT, "--no-such-option"],
    ["saliency", CHECKPOINT],
])
def test_usage_errors_are_one_line_with_status_2(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = one_line_error(CliRunner().invoke(main, command), 2)
    assert "--help" in message
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "half.png"
    path.write_bytes(GOOD[: len(GOOD) // 2])
    command = [sys.executable, "-m", "netvis", "saliency", CHECKPOINT, str(path), "--out", str(tmp_path / "o"),
               "--method", "gradient", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    plain = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 1 and plain.stdout == ""
    lines = plain.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"netvis: error: {path}: truncated or corrupt PNG image")
    debug = subprocess.run([command[0], "-m", "netvis", "--debug", *command[3:]], capture_output=True, text=True,
                           env=env, timeout=120)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "ImageReadError" in debug.stderr


def test_a_read_only_output_folder_is_one_line(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()

    def read_only(*args, **kwargs):  # what a read-only mount answers (root ignores chmod)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    result = CliRunner().invoke(main, ["saliency", CHECKPOINT, "sample:2", "--out", str(out), "--method",
                                       "gradient", "--no-progress"])
    message = one_line_error(result, 1)
    assert message.startswith(f"{out}: read-only file system")
    assert list(out.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_by_permissions_is_one_line(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = CliRunner().invoke(main, ["saliency", CHECKPOINT, "sample:2", "--out", str(out), "--method",
                                           "gradient", "--no-progress"])
        assert str(out) in one_line_error(result, 1)
    finally:
        out.chmod(0o755)


@pytest.mark.parametrize("fail_at", [1, 3])
def test_a_full_disk_says_so_and_leaves_no_partial_file(tmp_path, monkeypatch, fail_at):
    out = tmp_path / "out"
    real_fsync, calls = os.fsync, [0]

    def full(fd):
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder's fsync after a rename
            return real_fsync(fd)
        calls[0] += 1
        if calls[0] >= fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    result = CliRunner().invoke(main, ["saliency", CHECKPOINT, "sample:2", "sample:3", "--out", str(out),
                                       "--method", "gradient", "--method", "grad-cam", "--no-progress"])
    monkeypatch.undo()
    message = one_line_error(result, 1)
    assert message.startswith(f"no space left on {out}/")
    target = message.removeprefix("no space left on ")
    assert not os.path.exists(target)  # the file that did not fit is not there, not even in part
    names = sorted(os.listdir(out))
    assert not any(name.endswith(".tmp") for name in names)
    assert len(names) == fail_at - 1  # the files written before the disk filled up, each complete
    for name in names:
        if name.endswith(".npy"):
            np.load(out / name)
        elif name.endswith(".png"):
            with Image.open(out / name) as image:
                image.verify()
