"""The job queue, the cache keys and the safe file lookup on their own (no model, no server)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from netvis.app.serve import FileRefused, JobCancelled, JobQueue, allowed_host_headers, resolve_inside
from netvis.app.serve.cache import Cache, params_key


def wait(queue: JobQueue, job_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while (job := queue.get(job_id))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return job


def test_jobs_report_progress_results_and_errors():
    queue = JobQueue(workers=2)
    gate = threading.Event()
    try:
        def work(progress):
            progress(0.25, "a quarter")
            gate.wait(5)
            return {"answer": 42}

        job = queue.submit("demo", "k1", work, params={"x": 1})
        deadline = time.monotonic() + 5
        while queue.get(job.id)["progress"] < 0.25:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        running = queue.get(job.id)
        assert running["status"] == "running" and running["message"] == "a quarter"
        assert queue.submit("demo", "k1", work).id == job.id  # same key: the same job
        gate.set()
        done = wait(queue, job.id)
        assert done["status"] == "done" and done["result"] == {"answer": 42} and done["progress"] == 1.0
        assert done["params"] == {"x": 1} and done["seconds"] >= 0
        assert queue.submit("demo", "k1", work).id == job.id  # done: still the same job

        def fail(progress):
            raise ValueError("no such thing")

        failed = wait(queue, queue.submit("demo", "k2", fail).id)
        assert failed["status"] == "error" and failed["error"] == "ValueError: no such thing"
        retry = queue.submit("demo", "k2", lambda progress: {"ok": True})  # a failed job may be retried
        assert retry.id != failed["id"] and wait(queue, retry.id)["result"] == {"ok": True}

        cached = queue.submit("demo", "k3", fail, cached={"from": "disk"})
        assert queue.get(cached.id)["status"] == "done" and queue.get(cached.id)["cached"] is True
        assert queue.get("nope") is None
        assert queue.counts() == {"done": 3, "error": 1}
    finally:
        queue.shutdown()


def test_shutdown_cancels_running_and_queued_jobs():
    queue = JobQueue(workers=1)
    started = threading.Event()
    seen = []

    def long(progress):
        started.set()
        try:
            for i in range(1000):
                progress(i / 1000)
                time.sleep(0.01)
        except JobCancelled:
            seen.append("cancelled")
            raise
        return {}

    running = queue.submit("demo", "long", long)
    queued = queue.submit("demo", "next", long)
    assert started.wait(5)
    queue.shutdown(wait=True)
    assert seen == ["cancelled"]
    assert queue.get(running.id)["status"] == "cancelled" and queue.get(queued.id)["status"] == "cancelled"
    with pytest.raises(RuntimeError, match="shut down"):
        queue.submit("demo", "late", long)


def test_old_finished_jobs_are_forgotten_first():
    queue = JobQueue(workers=1, keep=3)
    try:
        ids = [queue.submit("demo", f"k{i}", lambda p: {}, cached={"i": i}).id for i in range(5)]
        assert [queue.get(i) is not None for i in ids] == [False, False, True, True, True]
    finally:
        queue.shutdown()


def test_params_key_is_canonical():
    assert params_key({"a": 1, "b": [1, 2]}) == params_key({"b": [1, 2], "a": 1})
    assert params_key({"a": 1}) != params_key({"a": 2})
    assert len(params_key({})) == 16


def test_resolve_inside_refuses_everything_outside(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "out.txt")
    os.symlink(root / "sub" / "a.png", root / "in.png")
    assert resolve_inside(root, "sub/a.png") == (root / "sub" / "a.png").resolve()
    assert resolve_inside(root, "in.png") == (root / "sub" / "a.png").resolve()
    for bad, status in [("../secret.txt", 403), ("sub/../../secret.txt", 403), ("/etc/passwd", 403),
                        ("sub//a.png", 403), ("./sub/a.png", 403), ("sub\\a.png", 403), ("C:/x", 403),
                        ("a\x00.png", 403), ("", 403), ("out.txt", 403), ("sub", 404), ("missing.png", 404),
                        ("sub/a.png/x", 404)]:
        with pytest.raises(FileRefused) as info:
            resolve_inside(root, bad)
        assert info.value.status == status, bad


def test_cache_layout_and_names(tmp_path):
    cache = Cache(tmp_path, "ab" * 32)
    assert cache.results == (tmp_path / ("ab" * 8)).resolve() and cache.uploads.is_dir()
    url = cache.write_file("saliency", "0123456789abcdef", "gradient.png", b"\x89PNG")
    assert url == "/files/saliency/0123456789abcdef/gradient.png"
    assert cache.served_file("saliency/0123456789abcdef/gradient.png").read_bytes() == b"\x89PNG"
    assert cache.load("saliency", "0123456789abcdef") is None
    cache.store("saliency", "0123456789abcdef", {"maps": [1]})
    assert cache.load("saliency", "0123456789abcdef") == {"maps": [1]}
    for kind, key, name in [("../x", "0123456789abcdef", "a.png"), ("saliency", "../../etc", "a.png"),
                            ("saliency", "0123456789abcdef", "../a.png")]:
        with pytest.raises(ValueError):
            cache.write_file(kind, key, name, b"")
    with pytest.raises(ValueError):
        cache.upload_path("../../x")


def test_allowed_host_headers():
    assert allowed_host_headers(8000) == {"localhost:8000", "127.0.0.1:8000", "[::1]:8000"}
    extra = allowed_host_headers(8000, ["box.lan", "10.1.2.3:9000", "fe80::1", "[fe80::2]:8000"])
    assert {"box.lan:8000", "10.1.2.3:9000", "[fe80::1]:8000", "[fe80::2]:8000"} <= extra
    assert "box.lan" not in extra
