"""One test (at least) per security rule of the viewer: Host header, Origin, upload cap, non-images, traversal,
symlinks, and clients that disconnect mid-request."""

from __future__ import annotations

import io
import json
import os
import socket
import time

import numpy as np
import pytest
from PIL import Image
from serve_testing import TEST_PORT, run_job

SECRET = b"netvis-test-secret: this file lies outside every folder the viewer serves"


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    path = tmp_path_factory.mktemp("outside") / "secret.txt"
    path.write_bytes(SECRET)
    return path


def refused(status: int, body: bytes) -> bool:
    return status in (403, 404) and SECRET not in body and b"Starlette" not in body and b"import " not in body


# ---------------------------------------------------------------------------------------------------
# Host and Origin


@pytest.mark.parametrize("host", [
    "evil.example", "evil.example:8000", "127.0.0.1:9999", "localhost", "127.0.0.1", "localhost:8000.evil.example",
    "127.0.0.1.nip.io:8000", "[::2]:8000", "",
])
def test_foreign_host_headers_are_refused(client, host):
    response = client.get("/api/model", headers={"host": host})
    assert response.status_code == 400
    assert "foreign Host header" in response.json()["error"]
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LocalHost:8000"])
def test_loopback_hosts_with_the_port_are_accepted(client, host):
    assert client.get("/api/model", headers={"host": host}).status_code == 200


def test_an_explicitly_allowed_host_is_accepted(viewer):
    from starlette.testclient import TestClient

    from netvis.app.serve import allowed_host_headers, create_app

    assert allowed_host_headers(80, ["Viewer.LAN"]) >= {"localhost", "127.0.0.1:80", "viewer.lan", "viewer.lan:80"}
    app = create_app(viewer, port=TEST_PORT, allowed_hosts=["viewer.lan", "10.0.0.5:9000"])
    with TestClient(app, base_url="http://viewer.lan:8000") as c:
        assert c.get("/api/model").status_code == 200
        assert c.get("/api/model", headers={"host": "10.0.0.5:9000"}).status_code == 200
        assert c.get("/api/model", headers={"host": "viewer.lan:8001"}).status_code == 400
        assert c.get("/api/model", headers={"host": "other.lan:8000"}).status_code == 400


def test_foreign_host_is_refused_by_the_real_server(live_server):
    answer = live_server.raw(b"GET /api/model HTTP/1.1\r\nHost: rebinding.example:%d\r\nConnection: close\r\n\r\n"
                             % live_server.port)
    assert answer.startswith(b"HTTP/1.1 400") and b"foreign Host header" in answer
    no_host = live_server.raw(b"GET /api/model HTTP/1.0\r\n\r\n")
    assert no_host.startswith(b"HTTP/1.1 400")
    two_hosts = live_server.raw(
        b"GET /api/model HTTP/1.1\r\nHost: %s\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
        % live_server.host.encode()
    )
    assert not two_hosts.startswith(b"HTTP/1.1 200")


def test_cross_origin_posts_are_refused(client):
    request = {"kind": "saliency", "image": "sample:0", "methods": ["gradient"]}
    response = client.post("/api/jobs", json=request, headers={"origin": "http://evil.example"})
    assert response.status_code == 403 and "cross-origin" in response.json()["error"]
    upload = client.post("/api/images", content=encode(np.zeros((8, 8), np.uint8)),
                         headers={"origin": "http://127.0.0.1:9999", "content-type": "image/png"})
    assert upload.status_code == 403
    same = client.post("/api/jobs", json=request, headers={"origin": f"http://127.0.0.1:{TEST_PORT}"})
    assert same.status_code == 202


# ---------------------------------------------------------------------------------------------------
# Uploads


def test_uploads_over_the_cap_are_refused_with_413(client, viewer, monkeypatch):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    big = encode(noise)
    assert len(big) > 3000
    monkeypatch.setattr(viewer, "max_upload_bytes", 3000)
    response = client.post("/api/images", content=big, headers={"content-type": "image/png"})
    assert response.status_code == 413 and "too large" in response.json()["error"]

    def chunks():  # no Content-Length: the cap applies while the body streams in
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    response = client.post("/api/images", content=chunks(), headers={"content-type": "image/png"})
    assert response.status_code == 413

    monkeypatch.setattr(viewer, "max_upload_pixels", 32 * 32)
    small = encode(np.zeros((40, 40), np.uint8))
    response = client.post("/api/images", content=small, headers={"content-type": "image/png"})
    assert response.status_code == 413 and "pixels" in response.json()["error"]
    assert client.post("/api/images", content=b"x", headers={"content-length": "abc"}).status_code == 400


def test_an_announced_oversized_upload_is_refused_before_its_body_is_sent(live_server, viewer):
    limit = viewer.max_upload_bytes
    started = time.monotonic()
    answer = live_server.raw(
        b"POST /api/images HTTP/1.1\r\nHost: %s\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n"
        % (live_server.host.encode(), limit + 1)
    )
    assert answer.startswith(b"HTTP/1.1 413") and b"too large" in answer
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("body", "content_type"), [
    (b"hello, I am not an image", "image/png"),
    (b"", "image/png"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "image/svg+xml"),
    (b"GIF89a" + bytes(range(200)), "image/gif"),
    ("truncated", "image/png"),
    ("corrupt", "image/png"),
])
def test_non_images_are_refused_with_415_and_a_clear_message(client, body, content_type):
    png = encode(np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8))
    if body == "truncated":
        body = png[: len(png) // 2]
    elif body == "corrupt":
        body = png[:60] + bytes(len(png) - 60)
    response = client.post("/api/images", content=body, headers={"content-type": content_type})
    assert response.status_code == 415, response.text
    message = response.json()["error"]
    assert "not an image" in message or "empty upload" in message
    assert "PNG" in message


def test_multipart_forms_are_refused_with_a_hint(client):
    response = client.post("/api/images", files={"file": ("a.png", encode(np.zeros((8, 8), np.uint8)), "image/png")})
    assert response.status_code == 415 and "request body" in response.json()["error"]


# ---------------------------------------------------------------------------------------------------
# Files: traversal, absolute paths, symlinks


ENCODED = [
    "/static/%2e%2e/app.py",
    "/static/%2e%2e%2fapp.py",
    "/static/%2E%2E%2Fapp.py",
    "/static/..%2fapp.py",
    "/static/..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2fetc%2fpasswd",
    "/static/..%5capp.py",
    "/files/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/files/..%2f..%2f..%2fetc%2fpasswd",
    "/static/viewer.js%00.png",
]


@pytest.mark.parametrize("path", ENCODED)
def test_encoded_traversal_is_refused(client, path):
    response = client.get(path)
    assert refused(response.status_code, response.content), (path, response.status_code)


def test_traversal_and_absolute_paths_are_refused_by_the_real_server(live_server, secret):
    depth = "../" * 12
    targets = [
        "/static/../app.py",
        "/static/../../../../../../etc/passwd",
        "/static/./../app.py",
        f"/files/{depth}{str(secret).lstrip('/')}",
        f"/static/{depth}{str(secret).lstrip('/')}",
        f"/static/{secret}",  # /static//tmp/.../secret.txt: an absolute path
        f"/files/{secret}",
        "/static/%2e%2e/app.py",
        f"/files/..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2f{str(secret).lstrip('/').replace('/', '%2f')}",
        "/static/..\\app.py",
    ]
    for target in targets:
        answer = live_server.raw(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                                 % (target.encode(), live_server.host.encode()))
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
        assert status in (400, 403, 404) and refused(404, answer), (target, answer[:200])
    ok = live_server.raw(b"GET /static/viewer.js HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                         % live_server.host.encode())
    assert ok.startswith(b"HTTP/1.1 200")


def test_symlinks_leading_out_of_the_cache_are_refused(client, viewer, secret):
    result = run_job(client, {"kind": "saliency", "image": "sample:2", "methods": ["gradient"]})
    good = client.get(result["maps"][0]["url"])
    assert good.status_code == 200 and good.content.startswith(b"\x89PNG")
    relative = result["maps"][0]["url"].removeprefix("/files/")
    links = {
        "leak.txt": secret,
        "leakdir": secret.parent,
        "inside.png": viewer.cache.results / relative,
    }
    try:
        for name, target in links.items():
            os.symlink(target, viewer.cache.results / name)
        for path in ("/files/leak.txt", "/files/leakdir/secret.txt"):
            response = client.get(path)
            assert response.status_code == 403 and SECRET not in response.content
        inside = client.get("/files/inside.png")  # a link that stays inside is fine
        assert inside.status_code == 200 and inside.content == good.content
    finally:
        for name in links:
            (viewer.cache.results / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------
# Clients that go away


def test_the_server_survives_clients_that_disconnect_mid_request(live_server):
    host = live_server.host.encode()
    live_server.raw(b"GET /api/mo", read=False)  # half a request line
    live_server.raw(b"POST /api/images HTTP/1.1\r\nHost: %s\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                    % host + b"\x89PNG\r\n\x1a\n" * 20, read=False)  # half a declared upload
    live_server.raw(b"POST /api/jobs HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 300\r\n"
                    b"\r\n{\"kind\": \"sali" % host, read=False)  # half a job request
    request = {"kind": "inversion", "image": "sample:11", "layer": "layer2", "steps": 30}
    body = json.dumps(request).encode()
    live_server.raw(b"POST /api/jobs HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                    b"\r\n%s" % (host, len(body), body), read=False)  # a job whose answer is never read

    with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as slow:
        slow.sendall(b"GET /api/model HTTP/1.1\r\nHost: ")  # held open, half sent, while others are served
        status, info = live_server.json("GET", "/api/model")
        assert status == 200 and info["input_shape"] == [1, 28, 28]
        status, job = live_server.json("POST", "/api/jobs", request)
        assert status == 202
        # a poller that hangs up without reading the answer, while the job runs
        live_server.raw(b"GET /api/jobs/%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (job["id"].encode(), host), read=False)
        deadline = time.monotonic() + 60
        while job["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
            status, job = live_server.json("GET", f"/api/jobs/{job['id']}")
            assert status == 200
    assert job["status"] == "done" and job["result"]["error"] < job["result"]["initial_error"]
    status, health = live_server.json("GET", "/api/health")
    assert status == 200 and health["ok"] and health["jobs"].get("error", 0) == 0
