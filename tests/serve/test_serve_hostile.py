"""The viewer under hostile input and load: every bad body is a 422 naming the field, jobs are bounded, fair
and cancellable, uploads are capped before decoding, no request waits on a job, a slow body is dropped."""

from __future__ import annotations

import io
import json
import os
import random
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image
from serve_testing import TEST_PORT, LiveServer, wait_job

from netvis.app.serve import JobQueue

SECRET = b"netvis-hostile-secret: outside every served folder"


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def lenient(viewer):
    """A test client that answers server errors with 500 instead of raising them (as a browser sees them)."""
    from starlette.testclient import TestClient

    from netvis.app.serve import create_app

    with TestClient(create_app(viewer, port=TEST_PORT), base_url=f"http://127.0.0.1:{TEST_PORT}",
                    raise_server_exceptions=False) as c:
        yield c


def post_raw(client, body: bytes, client_id: str | None = None):
    headers = {"content-type": "application/json"}
    if client_id:
        headers["x-netvis-client"] = client_id
    return client.post("/api/jobs", content=body, headers=headers)


def nested(depth: int) -> bytes:
    return b'{"kind": "examples", "layer": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"


# ---------------------------------------------------------------------------------------------------
# F3: every bad body is a 422 that names the field


BAD_BODIES = [
    (b"[]", "body"),
    (b"[1, 2]", "body"),
    (b'"saliency"', "body"),
    (b"null", "body"),
    (b"17", "body"),
    (b'{"kind": ["saliency"]}', "kind"),
    (b'{"kind": {}}', "kind"),
    (b'{"layer": "layer1"}', "kind"),
    (b'{"kind": "nope"}', "kind"),
    (b'{"kind": "saliency", "image": "sample:\xc2\xb2"}', "image"),
    (b'{"kind": "saliency", "image": "sample:1", "target": 100000000000000000000000000000000000000000}', "target"),
    (b'{"kind": "examples", "layer": "layer1", "k": 3e73}', "k"),
    (b'{"kind": "examples", "layer": "layer1", "k": 1e999}', "k"),
    (b'{"kind": "examples", "layer": "layer1", "k": "5"}', "k"),
    (b'{"kind": "examples", "layer": "layer1", "k": true}', "k"),
    (b'{"kind": "inversion", "image": "sample:1", "layer": "layer1", "tv_weight": NaN}', "tv_weight"),
    (b'{"kind": "inversion", "image": "sample:1", "layer": "layer1", "tv_weight": 1e308}', "tv_weight"),
    (b'{"kind": "examples", "layer": "layer1", "window": 3}', "window"),
    (b'{"kind": "saliency", "image": 2e149}', "image"),
    (b'{"kind": "saliency", "image": "sample:1", "methods": "gradient"}', "methods"),
    (b'{"kind": "saliency", "image": "sample:1", "methods": [["gradient"]]}', "methods"),
    (nested(50), "layer"),
    (nested(5000), "body"),
    (b'{"size": "conv1", "k": {"kind": {}}, "window": 3e73, "image": 2e149}', "kind"),
    (b'{"kind": "examples", "layer": "layer1", "kind": "filters"}', "channel"),  # the last key wins, as in JSON
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_bad_bodies_are_422_naming_the_field(lenient, body, field):
    response = post_raw(lenient, body)
    assert response.status_code == 422, (body[:80], response.status_code, response.text[:300])
    payload = response.json()
    assert field in payload["error"], payload
    assert any(error["field"] == field or error["field"].startswith(field + ".") for error in payload["errors"])
    assert "Traceback" not in response.text and " at 0x" not in response.text


def test_a_body_that_is_not_json_is_400_and_a_wrong_type_is_422_at_once(lenient, viewer):
    assert post_raw(lenient, b"{not json").status_code == 400
    with viewer.model_lock:  # nothing the body asks for can wait on the model
        assert post_raw(lenient, b"[]").status_code == 422


def _random_value(rng: random.Random, depth: int = 0):
    choice = rng.randrange(12 if depth < 3 else 8)
    return [
        lambda: None, lambda: rng.choice([True, False]), lambda: rng.randint(-10, 100),
        lambda: rng.choice([10**80, -(10**40), 2**63, 2**64 + 1]), lambda: rng.choice([3e73, -1e-300, 0.5, 1e308]),
        lambda: rng.choice(["", "layer1", "layer2", "fc", "sample:3", "sample:²", "upload:0123456789abcdef",
                            "../etc/passwd", "\x00", "x" * 5000, "gradient", "lbfgs", "mean"]),
        lambda: rng.choice(["examples", "filters", "saliency", "inversion"]),
        lambda: "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(8))),
        lambda: [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))],
        lambda: {rng.choice(["kind", "a", "layer"]): _random_value(rng, depth + 1) for _ in range(rng.randrange(3))},
        lambda: [rng.choice(["gradient", "occlusion", "lime", 3])],
        lambda: {"kind": {}},
    ][choice]()


def random_body(rng: random.Random) -> dict:
    keys = ["kind", "layer", "k", "reduce", "channel", "n", "image", "target", "methods", "steps", "tv_weight",
            "optimizer", "window", "size"]
    body = {key: _random_value(rng) for key in rng.sample(keys, rng.randrange(1, 7))}
    if rng.random() < 0.7:
        body["kind"] = rng.choice(["examples", "filters", "saliency", "inversion", "nope"])
    return body


def test_1000_random_job_bodies_get_no_5xx(lenient, viewer):
    rng = random.Random(18)
    seen: dict[int, int] = {}
    try:
        for i in range(1000):
            body = random_body(rng)
            text = json.dumps(body).encode()
            if i % 7 == 0:  # cut short: not JSON at all
                text = text[: rng.randrange(len(text))]
            response = post_raw(lenient, text, client_id=f"fuzz-{i % 8}")
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (body, response.text[:300])
            if response.status_code >= 400:
                assert response.json()["error"]
    finally:
        for job in list(viewer.jobs.snapshot_ids()):
            viewer.jobs.cancel(job)
    assert seen.get(422, 0) > 500 and seen.get(400, 0) > 50  # mostly refused, by the schema or the JSON parser


# a hypothesis fuzz test of the same endpoint ---------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
job_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"kind": st.sampled_from(["examples", "filters", "saliency", "inversion"]) | json_values},
        optional={key: json_values | st.sampled_from(["layer1", "layer2", "sample:1", "sample:²", "gradient"])
                  for key in ("layer", "k", "channel", "n", "image", "target", "methods", "steps", "tv_weight",
                              "optimizer", "reduce", "window")},
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(body=job_bodies)
def test_fuzzed_job_bodies_never_get_a_5xx(lenient, viewer, body):
    response = post_raw(lenient, json.dumps(body).encode(), client_id="hypothesis")
    assert response.status_code in (202, 400, 422, 429), (body, response.status_code, response.text[:300])
    if response.status_code == 202:
        viewer.jobs.cancel(response.json()["id"])


# ---------------------------------------------------------------------------------------------------
# F1: bounded queue, per-client and global limits, fair scheduling, cancellation


def test_per_client_and_global_limits_answer_429_with_retry_after(viewer, serve_checkpoint, tmp_path):
    from starlette.testclient import TestClient

    from netvis.app.serve import Viewer, create_app

    small = Viewer(serve_checkpoint, data="fashion-mnist-sample", limit=64, cache=tmp_path, workers=1,
                   max_queued=6, max_queued_per_client=3)
    try:
        with small.model_lock, TestClient(create_app(small, port=TEST_PORT),
                                          base_url=f"http://127.0.0.1:{TEST_PORT}") as c:
            def ask(n: int, who: str):
                return c.post("/api/jobs", json={"kind": "saliency", "image": f"sample:{n}", "methods": ["gradient"]},
                              headers={"x-netvis-client": who})

            answers = [ask(n, "a").status_code for n in range(5)]
            assert answers[:3] == [202, 202, 202]
            refused = ask(10, "a")
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert "per client" in refused.json()["error"]
            assert ask(0, "a").status_code == 202  # the same computation again is not a new job
            assert [ask(n, "b").status_code for n in range(20, 23)] == [202, 202, 202]
            assert ask(30, "c").status_code == 202  # one job runs (waiting for the model), six wait
            full = ask(31, "d")
            assert full.status_code == 429 and "queue is full" in full.json()["error"]
            assert int(full.headers["retry-after"]) >= 1
            health = c.get("/api/health").json()
            assert health["jobs"] == {"queued": 6, "running": 1}
    finally:
        small.close()


def test_the_queue_takes_clients_in_turn():
    queue = JobQueue(workers=1)
    gate = threading.Event()
    order: list[str] = []
    try:
        def work(name):
            def fn(progress):
                if name == "first":
                    gate.wait(10)
                order.append(name)
                return {}
            return fn

        first = queue.submit("demo", "first", work("first"), client="a")
        deadline = time.monotonic() + 10
        while queue.get(first.id)["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.005)
        for i in range(4):
            queue.submit("demo", f"a{i}", work(f"a{i}"), client="a")
        queue.submit("demo", "b0", work("b0"), client="b")
        queue.submit("demo", "c0", work("c0"), client="c")
        queue.submit("demo", "b1", work("b1"), client="b")
        gate.set()
        deadline = time.monotonic() + 10
        while len(order) < 8:
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        queue.shutdown()
    # round robin: a's backlog does not hold up b and c
    assert order == ["first", "b0", "c0", "a0", "b1", "a1", "a2", "a3"]


def test_cancel_removes_queued_jobs_and_stops_running_ones_at_their_next_step():
    queue = JobQueue(workers=1)
    steps: list[int] = []
    try:
        def long(progress):
            for i in range(10_000):
                progress(i / 10_000)
                steps.append(i)
                time.sleep(0.001)
            return {}

        running = queue.submit("demo", "long", long)
        queued = queue.submit("demo", "next", long)
        deadline = time.monotonic() + 10
        while not steps:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert queue.cancel(queued.id)["status"] == "cancelled"
        assert queue.cancel(running.id)["status"] in ("running", "cancelled")
        while queue.get(running.id)["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert queue.get(running.id)["status"] == "cancelled" and len(steps) < 10_000
        assert queue.get(queued.id)["status"] == "cancelled"
        assert queue.cancel("missing") is None
        again = queue.submit("demo", "long", lambda p: {"ok": 1})  # a cancelled computation may be asked again
        assert again.id != running.id
    finally:
        queue.shutdown()


def test_a_shared_job_stops_only_when_every_client_that_asked_for_it_cancels():
    queue = JobQueue(workers=1)
    started = threading.Event()
    try:
        def long(progress):
            started.set()
            for i in range(10_000):
                progress(i / 10_000)
                time.sleep(0.001)
            return {}

        blocker = queue.submit("demo", "blocker", long, client="a")
        assert started.wait(10)
        shared = queue.submit("demo", "shared", long, client="a")
        assert queue.submit("demo", "shared", long, client="b").id == shared.id  # the same computation
        assert queue.get(shared.id)["requesters"] == 2
        # a withdraws its request: b still waits for the result, so the job stays queued
        after_a = queue.cancel(shared.id, "a")
        assert after_a["status"] == "queued" and after_a["requesters"] == 1
        assert queue.cancel(shared.id, "a")["status"] == "queued"  # a again: still b's job
        # b, the last client that asked, cancels: now it is dropped
        assert queue.cancel(shared.id, "b")["status"] == "cancelled"
        # the running job shared by two clients goes on after one cancels, stops after both
        assert queue.submit("demo", "blocker", long, client="b").id == blocker.id
        assert queue.cancel(blocker.id, "b")["message"] != "cancelling"
        assert queue.cancel(blocker.id, "a")["message"] == "cancelling"
        deadline = time.monotonic() + 10
        while queue.get(blocker.id)["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert queue.get(blocker.id)["status"] == "cancelled"
    finally:
        queue.shutdown()


def test_delete_cancels_a_running_inversion(client, viewer):
    request = {"kind": "inversion", "image": "sample:5", "layer": "layer3", "steps": 1000, "optimizer": "adam"}
    job = client.post("/api/jobs", json=request).json()
    deadline = time.monotonic() + 60
    while job["status"] == "queued" or job["progress"] == 0:
        assert time.monotonic() < deadline and job["status"] in ("queued", "running"), job
        time.sleep(0.02)
        job = client.get(f"/api/jobs/{job['id']}").json()
    response = client.delete(f"/api/jobs/{job['id']}")
    assert response.status_code in (200, 202)
    final = wait_job(client, response.json(), timeout=30)
    assert final["status"] == "cancelled" and final["result"] is None
    assert client.delete("/api/jobs/0123456789abcdef").status_code == 404
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 200  # cancelled already: nothing to do
    done = client.post("/api/jobs", json={"kind": "saliency", "image": "sample:1", "methods": ["gradient"]}).json()
    done = wait_job(client, done)
    assert client.delete(f"/api/jobs/{done['id']}").status_code == 409


def test_delete_by_one_of_two_clients_leaves_the_shared_job_running(client, viewer):
    request = {"kind": "inversion", "image": "sample:6", "layer": "layer3", "steps": 1000, "optimizer": "adam"}
    job = client.post("/api/jobs", json=request, headers={"X-Netvis-Client": "alice-0001"}).json()
    same = client.post("/api/jobs", json=request, headers={"X-Netvis-Client": "bob-00000001"}).json()
    assert same["id"] == job["id"] and same["requesters"] == 2
    response = client.delete(f"/api/jobs/{job['id']}", headers={"X-Netvis-Client": "alice-0001"})
    assert response.status_code == 200 and response.json()["status"] in ("queued", "running")
    assert response.json()["requesters"] == 1 and response.json()["message"] != "cancelling"
    response = client.delete(f"/api/jobs/{job['id']}", headers={"X-Netvis-Client": "bob-00000001"})
    assert response.status_code in (200, 202)
    assert wait_job(client, response.json(), timeout=30)["status"] == "cancelled"


def test_a_job_waiting_for_the_model_can_be_cancelled(client, viewer):
    with viewer.model_lock:
        job = client.post("/api/jobs", json={"kind": "examples", "layer": "layer1", "k": 7}).json()
        deadline = time.monotonic() + 20
        while client.get(f"/api/jobs/{job['id']}").json()["status"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        client.delete(f"/api/jobs/{job['id']}")
        final = wait_job(client, job, timeout=20)  # stops while the model is still busy
    assert final["status"] == "cancelled"


# ---------------------------------------------------------------------------------------------------
# F2 and minor: uploads


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "GIF", "BMP", "WEBP"])
def test_only_png_and_jpeg_uploads_are_accepted(client, fmt):
    data = encode(np.zeros((16, 16, 3), np.uint8), fmt)
    response = client.post("/api/images", content=data, headers={"content-type": "application/octet-stream"})
    assert response.status_code == 415, response.text
    message = response.json()["error"]
    assert "PNG or JPEG" in message and "BytesIO" not in message and " at 0x" not in message


def test_random_bytes_get_a_415_without_object_reprs(client):
    response = client.post("/api/images", content=os.urandom(300), headers={"content-type": "image/png"})
    assert response.status_code == 415 and " at 0x" not in response.text and "BytesIO" not in response.text


def test_the_pixel_limit_is_checked_before_decoding(client, viewer, monkeypatch):
    from PIL import Image as PILImage

    data = encode(np.zeros((120, 120), np.uint8))
    decoded = []
    original = PILImage.Image.load
    monkeypatch.setattr(PILImage.Image, "load", lambda self: decoded.append(self.size) or original(self))
    monkeypatch.setattr(viewer, "max_upload_pixels", 100 * 100)
    response = client.post("/api/images", content=data, headers={"content-type": "image/png"})
    assert response.status_code == 413 and "120 x 120 pixels" in response.json()["error"]
    assert (120, 120) not in decoded


def test_concurrent_decodes_are_bounded(live_server, viewer, monkeypatch):
    import netvis.app.serve.viewer as viewer_module

    active, peak = [0], [0]
    lock = threading.Lock()
    original = viewer_module.read_image

    def counted(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.05)
            return original(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(viewer_module, "read_image", counted)
    data = encode(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    statuses = []

    def upload():
        status, _, _ = live_server.request("POST", "/api/images", data, {"Content-Type": "image/png"})
        statuses.append(status)

    threads = [threading.Thread(target=upload) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses == [201] * 10
    assert 1 <= peak[0] <= viewer.decode_slots


def test_uploads_are_served_only_as_regular_files_not_symlinks(client, viewer, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    good = client.post("/api/images", content=encode(np.full((28, 28), 77, np.uint8)),
                       headers={"content-type": "image/png"}).json()
    outside_png = tmp_path / "outside.png"
    outside_png.write_bytes(encode(np.zeros((28, 28), np.uint8)))
    links = {"0123456789abcde0": secret, "0123456789abcde1": outside_png,
             "0123456789abcde2": viewer.cache.upload_path(good["id"])}
    try:
        for name, target in links.items():
            os.symlink(target, viewer.cache.uploads / f"{name}.png")
        for name in links:
            response = client.get(f"/api/images/{name}.png")
            assert response.status_code == 404 and SECRET not in response.content
            job = client.post("/api/jobs", json={"kind": "saliency", "image": f"upload:{name}"})
            assert job.status_code == 422 and "no such uploaded image" in job.json()["error"]
        (viewer.cache.uploads / "0123456789abcdef.png").mkdir()
        assert client.get("/api/images/0123456789abcdef.png").status_code == 404
        assert client.get(good["url"]).status_code == 200
    finally:
        for name in links:
            (viewer.cache.uploads / f"{name}.png").unlink(missing_ok=True)
        (viewer.cache.uploads / "0123456789abcdef.png").rmdir()


# ---------------------------------------------------------------------------------------------------
# issue 21: nothing waits on the event loop


def test_every_other_request_is_answered_while_jobs_and_decodes_are_stuck(live_server, viewer, monkeypatch):
    import netvis.app.serve.viewer as viewer_module

    release = threading.Event()
    original = viewer_module.read_image

    def stuck(*args, **kwargs):
        release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(viewer_module, "read_image", stuck)
    data = encode(np.zeros((28, 28), np.uint8))
    uploads = [threading.Thread(target=live_server.request, args=("POST", "/api/images", data,
                                                                  {"Content-Type": "image/png"}))
               for _ in range(2 * viewer.decode_slots + 2)]
    try:
        with viewer.model_lock:  # every job waits for the model
            for t in uploads:
                t.start()
            status, job = live_server.json("POST", "/api/jobs", {"kind": "examples", "layer": "layer2", "k": 9})
            assert status == 202
            for path in ("/api/health", "/api/model", f"/api/jobs/{job['id']}", "/api/data?limit=5",
                         "/api/data/3.png", "/static/viewer.js", "/"):
                status, _, _ = live_server.request("GET", path)
                assert status == 200, path
            status, _ = live_server.json("POST", "/api/jobs", [])
            assert status == 422
    finally:
        release.set()
        for t in uploads:
            t.join(30)


def test_a_client_that_never_finishes_its_body_is_dropped(viewer):
    server = LiveServer(viewer, body_timeout=0.5)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
            s.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 300\r\n\r\n{\"kind\": \"sali" % server.host.encode())
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        status, health = server.json("GET", "/api/health")
        assert status == 200 and health["ok"]
    finally:
        server.stop()


def test_a_client_that_never_finishes_its_headers_is_dropped(viewer, monkeypatch):
    import uvicorn

    from netvis.app.serve import app as app_module

    monkeypatch.setattr(app_module._TimedH11Protocol, "header_timeout", 0.5)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app_module.create_app(viewer, port=port), log_level="warning",
                            http=app_module._TimedH11Protocol, timeout_keep_alive=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as slow:
            slow.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Slow: " % port)
            assert slow.recv(100) == b""  # closed by the server, not by our 20 s timeout
        with socket.create_connection(("127.0.0.1", port), timeout=20) as kept:  # a finished request is served
            kept.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                answer += kept.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200")
            kept.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1")  # then half a second request
            assert kept.recv(100) == b""
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
