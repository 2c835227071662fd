"""Helpers for the viewer tests: job polling and a real uvicorn server in a thread."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

TEST_PORT = 8000
N_IMAGES = 64


def wait_job(client, job: dict, timeout: float = 60.0) -> dict:
    """Poll ``/api/jobs/<id>`` until the job leaves queued/running; returns the last snapshot."""
    deadline = time.monotonic() + timeout
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job['id']} did not finish: {job}"
        time.sleep(0.02)
        response = client.get(f"/api/jobs/{job['id']}")
        assert response.status_code == 200, response.text
        job = response.json()
    return job


def run_job(client, request: dict, timeout: float = 60.0) -> dict:
    """Submit a job and wait for it; asserts that it is done and returns its result."""
    response = client.post("/api/jobs", json=request)
    assert response.status_code == 202, response.text
    job = wait_job(client, response.json(), timeout)
    assert job["status"] == "done", job
    return job["result"]


class LiveServer:
    """uvicorn serving the viewer's app in a thread, on a socket bound to a free loopback port."""

    def __init__(self, viewer, **app_options) -> None:
        import uvicorn

        from netvis.app.serve import create_app

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        app = create_app(viewer, port=self.port, **app_options)
        config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=5, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def connection(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """One request on a fresh connection: ``(status, headers, body bytes)``."""
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, payload=None):
        body = None if payload is None else json.dumps(payload).encode()
        status, _, data = self.request(method, path, body, {"Content-Type": "application/json"} if body else {})
        return status, json.loads(data)

    def raw(self, data: bytes, *, read: bool = True, timeout: float = 10.0) -> bytes:
        """Send raw bytes on a new socket; return what the server answers until it closes (or ``b""``)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            if not read:
                return b""
            chunks = []
            try:
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            except TimeoutError:
                pass
            return b"".join(chunks)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


