"""The real `netvis serve` process: it stops promptly on SIGTERM/SIGINT with jobs running and leaves nothing
half-written, refuses a port in use before printing its address, and accepts the loopback address it binds."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint, cache, port: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "netvis", "serve", str(checkpoint), "--port", str(port), "--data",
         "fashion-mnist-sample", "--limit", "16", "--cache", str(cache), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    line = proc.stdout.readline()
    assert "netvis viewer: http://127.0.0.1:" in line, line + proc.stdout.read()
    return proc


def request(port: int, method: str, path: str, payload=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = None if payload is None else json.dumps(payload)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_server_stops_on_a_signal_with_jobs_running_and_leaves_nothing_half_written(
        serve_checkpoint, tmp_path, sig):
    port = free_port()
    proc = start_server(serve_checkpoint, tmp_path, port)
    try:
        status, job = request(port, "POST", "/api/jobs", {"kind": "inversion", "image": "sample:3", "layer": "layer3",
                                                          "steps": 1000, "optimizer": "adam"})
        assert status == 202
        status, queued = request(port, "POST", "/api/jobs", {"kind": "examples", "layer": "layer2", "k": 3})
        assert status == 202
        deadline = time.monotonic() + 60
        while job["progress"] == 0:  # the inversion is under way
            assert time.monotonic() < deadline
            time.sleep(0.05)
            job = request(port, "GET", f"/api/jobs/{job['id']}")[1]
        proc.send_signal(sig)
        proc.wait(timeout=20)  # a liveness bound; the benchmark measures the time
        output = proc.stdout.read()
        assert "Traceback" not in output, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    for result in tmp_path.rglob("result.json"):
        json.loads(result.read_text())


def test_a_port_in_use_fails_before_the_address_is_printed(serve_checkpoint, tmp_path):
    from click.testing import CliRunner

    from netvis.app.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", str(serve_checkpoint), "--port", str(port), "--cache",
                                           str(tmp_path), "--data", "fashion-mnist-sample", "--limit", "4"])
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.output and "http://" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_another_loopback_address_is_accepted_in_the_host_header(serve_checkpoint, tmp_path, monkeypatch):
    from click.testing import CliRunner
    from starlette.testclient import TestClient

    from netvis.app.cli import main
    from netvis.app.serve import app as app_module

    seen = {}

    def fake_run(self, sockets=None):
        seen["app"], seen["bound"] = self.config.app, sockets[0].getsockname()

    monkeypatch.setattr(app_module._Server, "run", fake_run)
    port = free_port()
    result = CliRunner().invoke(main, ["serve", str(serve_checkpoint), "--host", "127.0.0.2", "--port", str(port),
                                       "--cache", str(tmp_path), "--data", "fashion-mnist-sample", "--limit", "4"])
    assert result.exit_code == 0, result.output
    assert f"http://127.0.0.2:{port}/" in result.output and seen["bound"] == ("127.0.0.2", port)
    with TestClient(seen["app"], base_url=f"http://127.0.0.2:{port}") as client:
        assert client.get("/api/health").status_code == 200
        assert client.get("/api/health", headers={"host": f"127.0.0.1:{port}"}).status_code == 200
        assert client.get("/api/health", headers={"host": f"127.0.0.3:{port}"}).status_code == 400
    seen["app"].state.viewer.close()
