"""Does the real viewer stay responsive under hostile load, and does it stop promptly?

Starts ``netvis serve CHECKPOINT`` as a subprocess on a free loopback port and, against that process:

* ``--clients`` concurrent clients (8) post ``--bodies`` job bodies (2000) in all, most of them random
  (wrong JSON types, huge numbers, unknown fields, deep nesting, cut-off JSON) and some valid (saliency,
  examples, filters and inversion jobs, which then run);
* meanwhile ``--uploads`` (20) concurrent uploads of one 4096 x 4096 RGBA PNG;
* a poller asks ``/api/health`` every 50 ms throughout;
* at the end a long inversion is started and the server gets SIGTERM while it runs.

It reports the p50/p99 latency of ``/api/health`` and of job submission, the count of each status code, the
requests that got no answer (a 15 s client timeout or a dropped connection), the server's peak RSS (sampled
every 20 ms with psutil), the SIGTERM-to-exit time, and whether the cache holds a half-written file.

``--src DIR`` runs the same load against another source tree (``PYTHONPATH=DIR``), e.g. an older netvis.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py             # writes benchmarks/results/serve_load_cpu.json
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def big_png(size: int = 4096) -> bytes:
    """A 4096 x 4096 RGBA PNG that compresses well (gradients and a checkerboard alpha): small on the wire,
    64 MiB of pixels once decoded."""
    y, x = np.mgrid[0:size, 0:size].astype(np.int32)
    rgba = np.empty((size, size, 4), np.uint8)
    rgba[..., 0] = x * 255 // size
    rgba[..., 1] = y * 255 // size
    rgba[..., 2] = (x + y) % 256
    rgba[..., 3] = np.where((x // 512 + y // 512) % 2, 255, 128)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


class Stats:
    """Thread-safe latencies and status codes per request kind."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = {}
        self.codes: dict[str, dict[str, int]] = {}
        self.unanswered: dict[str, int] = {}
        self.errors: list[str] = []

    def add(self, kind: str, status: int | None, seconds: float, error: str | None = None) -> None:
        with self.lock:
            if status is None:
                self.unanswered[kind] = self.unanswered.get(kind, 0) + 1
                if len(self.errors) < 20:
                    self.errors.append(f"{kind}: {error}")
                return
            self.latency.setdefault(kind, []).append(seconds)
            codes = self.codes.setdefault(kind, {})
            codes[str(status)] = codes.get(str(status), 0) + 1


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = TIMEOUT, conn: http.client.HTTPConnection | None = None):
    """``(status, payload bytes, seconds)``; raises on no answer."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    start = time.perf_counter()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        if response.getheader("connection", "").lower() == "close" and not own:
            conn.close()
        return response.status, data, time.perf_counter() - start
    finally:
        if own:
            conn.close()


def random_value(rng: random.Random, depth: int = 0):
    pick = rng.randrange(11 if depth < 3 else 7)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False, 0, -1, 7, 10**80, 2**64, 3e73, 2e149, -1e-300, 1e308])
    if pick == 2:
        return rng.choice(["", "conv1", "layer1", "sample:3", "sample:\u00b2", "upload:0123456789abcdef",
                           "../etc/passwd", "x" * 3000, "gradient", "lbfgs", "max"])
    if pick == 3:
        return rng.choice(["examples", "filters", "saliency", "inversion", "nope"])
    if pick == 4:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(10)))
    if pick == 5:
        return rng.uniform(-1e6, 1e6)
    if pick == 6:
        return rng.randrange(-5, 100)
    if pick == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 8:
        return {rng.choice(["kind", "a", "layer"]): random_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    if pick == 9:
        return [rng.choice(["gradient", "occlusion", "lime", 3])]
    return {"kind": {}}


def random_body(rng: random.Random) -> bytes:
    shape = rng.random()
    if shape < 0.05:
        return rng.choice([b"[]", b"null", b"17", b'"saliency"', b"[1, 2]"])
    if shape < 0.10:
        depth = rng.randrange(50, 4000)
        return b'{"kind": "examples", "layer": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
    keys = ["kind", "layer", "k", "reduce", "channel", "n", "image", "target", "methods", "steps", "tv_weight",
            "optimizer", "window", "size"]
    body = {key: random_value(rng) for key in rng.sample(keys, rng.randrange(1, 7))}
    if rng.random() < 0.7:
        body["kind"] = rng.choice(["examples", "filters", "saliency", "inversion", "nope"])
    text = json.dumps(body).encode()
    if shape > 0.93:
        text = text[: rng.randrange(1, len(text))]  # cut off: not JSON
    return text


def valid_body(rng: random.Random, info: dict) -> bytes:
    layers = [layer for layer in info["layers"] if layer["channels"] > 1 and len(layer["shape"]) == 3]
    layer = rng.choice(layers)
    image = f"sample:{rng.randrange(info['data']['images'])}"
    kind = rng.choice(["saliency", "saliency", "saliency", "examples", "filters", "inversion"])
    if kind == "saliency":
        body = {"kind": kind, "image": image, "target": rng.randrange(len(info["classes"])),
                "methods": rng.sample(["gradient", "guided-backprop", "grad-cam", "occlusion"], rng.randrange(1, 3))}
    elif kind == "examples":
        body = {"kind": kind, "layer": layer["name"], "k": rng.randrange(1, 17)}
    elif kind == "filters":
        body = {"kind": kind, "layer": layer["name"], "channel": rng.randrange(layer["channels"]), "k": 8, "n": 4}
    else:
        body = {"kind": kind, "image": image, "layer": layer["name"], "steps": rng.randrange(5, 40)}
    return json.dumps(body).encode()


def run(args: argparse.Namespace) -> dict:
    port = free_port()
    cache = tempfile.mkdtemp(prefix="netvis-serve-load-")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    command = [sys.executable, "-m", "netvis", "serve", args.checkpoint, "--port", str(port), "--cache", cache]
    if args.data:
        command += ["--data", args.data]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(server.stdout), daemon=True).start()
    process = psutil.Process(server.pid)
    deadline = time.monotonic() + 180
    while True:
        try:
            status, data, _ = request(port, "GET", "/api/model", timeout=5)
            if status == 200:
                info = json.loads(data)
                break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start:\n" + "".join(log))
        time.sleep(0.2)
    idle_rss = process.memory_info().rss

    stats = Stats()
    stop = threading.Event()
    peak = [idle_rss]

    def sample_rss() -> None:
        while not stop.is_set():
            try:
                rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
            except psutil.Error:
                return
            peak[0] = max(peak[0], rss)
            time.sleep(0.02)

    def poll_health() -> None:
        while not stop.is_set():
            try:
                status, _, seconds = request(port, "GET", "/api/health")
                stats.add("health", status, seconds)
            except OSError as exc:
                stats.add("health", None, 0.0, repr(exc))
            time.sleep(0.05)

    upload = big_png()
    uploads_go = threading.Event()

    def send_upload() -> None:
        uploads_go.wait()
        try:
            status, _, seconds = request(port, "POST", "/api/images", upload, {"Content-Type": "image/png"},
                                         timeout=60)
            stats.add("upload", status, seconds)
        except OSError as exc:
            stats.add("upload", None, 0.0, repr(exc))

    per_client = args.bodies // args.clients
    sent = [0]
    accepted: list[str] = []

    def client(index: int) -> None:
        rng = random.Random(1000 + index)
        conn = None
        for _ in range(per_client):
            valid = rng.random() < args.valid_fraction
            body = valid_body(rng, info) if valid else random_body(rng)
            kind = "submit_valid" if valid else "submit_random"
            headers = {"Content-Type": "application/json", "X-Netvis-Client": f"load-{index}"}
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
                status, data, seconds = request(port, "POST", "/api/jobs", body, headers, conn=conn)
                stats.add(kind, status, seconds)
                if status == 202:
                    with stats.lock:
                        accepted.append(json.loads(data)["id"])
            except (OSError, http.client.HTTPException) as exc:
                stats.add(kind, None, 0.0, repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
            with stats.lock:
                sent[0] += 1
                if sent[0] >= args.bodies // 4:
                    uploads_go.set()
        if conn is not None:
            conn.close()

    helpers = [threading.Thread(target=sample_rss, daemon=True), threading.Thread(target=poll_health, daemon=True)]
    uploaders = [threading.Thread(target=send_upload, daemon=True) for _ in range(args.uploads)]
    clients = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    started = time.perf_counter()
    for thread in helpers + uploaders + clients:
        thread.start()
    for thread in clients:
        thread.join()
    uploads_go.set()
    for thread in uploaders:
        thread.join()
    load_seconds = time.perf_counter() - started

    # a long job is running when the server is told to stop
    status, data, _ = request(port, "POST", "/api/jobs", json.dumps({
        "kind": "inversion", "image": "sample:0", "layer": info["layers"][-2]["name"], "steps": 1000,
        "optimizer": "adam"}).encode(), {"Content-Type": "application/json", "X-Netvis-Client": "stopper"})
    job = json.loads(data) if status == 202 else {}
    wait_until = time.monotonic() + 60
    while job.get("status") == "queued" or (job.get("status") == "running" and job.get("progress", 0) == 0):
        if time.monotonic() > wait_until:
            break
        time.sleep(0.05)
        job = json.loads(request(port, "GET", f"/api/jobs/{job['id']}")[1])
    counts = json.loads(request(port, "GET", "/api/health")[1])["jobs"]
    job_errors = []
    for job_id in sorted(set(accepted)):
        snapshot = json.loads(request(port, "GET", f"/api/jobs/{job_id}")[1])
        if snapshot.get("status") == "error":
            job_errors.append({"params": snapshot["params"], "kind": snapshot["kind"], "error": snapshot["error"]})
    stop.set()
    signalled = time.perf_counter()
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
        exit_seconds = time.perf_counter() - signalled
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        exit_seconds = None
    for thread in helpers:
        thread.join(2)
    leftovers = [str(p) for p in Path(cache).rglob("*.tmp")]
    broken = []
    for result in Path(cache).rglob("result.json"):
        try:
            json.loads(result.read_text())
        except ValueError:
            broken.append(str(result))

    def percentiles(values: list[float]) -> dict:
        if not values:
            return {}
        array = np.asarray(values) * 1000
        return {"n": len(values), "p50_ms": round(float(np.percentile(array, 50)), 2),
                "p99_ms": round(float(np.percentile(array, 99)), 2), "max_ms": round(float(array.max()), 2)}

    all_codes: dict[str, int] = {}
    for codes in stats.codes.values():
        for code, n in codes.items():
            all_codes[code] = all_codes.get(code, 0) + n
    submit = stats.latency.get("submit_random", []) + stats.latency.get("submit_valid", [])
    return {
        "question": "Does `netvis serve` answer everyone quickly under hostile load, cap its memory and stop "
                    "promptly on SIGTERM?",
        "server": " ".join(command[2:]),
        "source": str(Path(args.src).resolve()) if args.src else "this checkout",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "note": "a 2-core machine shared with other agents' jobs during the run: latencies include "
                            "their load"},
        "load": {"clients": args.clients, "bodies": per_client * args.clients,
                 "valid_fraction": args.valid_fraction, "uploads": args.uploads,
                 "upload": {"pixels": "4096 x 4096 RGBA", "bytes": len(upload)}, "seconds": round(load_seconds, 2)},
        "health": percentiles(stats.latency.get("health", [])),
        "submit_all": percentiles(submit),
        "submit_valid": percentiles(stats.latency.get("submit_valid", [])),
        "upload_latency": percentiles(stats.latency.get("upload", [])),
        "status_codes": {kind: dict(sorted(codes.items())) for kind, codes in sorted(stats.codes.items())},
        "status_codes_total": dict(sorted(all_codes.items())),
        "5xx": sum(n for code, n in all_codes.items() if code.startswith("5")),
        "unanswered": dict(stats.unanswered),
        "unanswered_total": sum(stats.unanswered.values()),
        "unanswered_examples": stats.errors,
        "rss_mb": {"idle": round(idle_rss / 2**20, 1), "peak": round(peak[0] / 2**20, 1)},
        "jobs_at_sigterm": counts,
        "job_errors": job_errors[:10],
        "sigterm_to_exit_s": None if exit_seconds is None else round(exit_seconds, 3),
        "exit_code": server.returncode,
        "cache_half_written": {"tmp_files": leftovers, "unreadable_results": broken},
        "targets": {"zero_5xx": True, "zero_unanswered": True, "health_p99_ms_below": 200,
                    "rss_peak_mb_below": 1536, "sigterm_exit_s_below": 5},
        "server_log_tail": "".join(log[-15:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="fashion-mnist-small")
    parser.add_argument("--data", help="--data for netvis serve (default: the checkpoint's data set)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--bodies", type=int, default=2000)
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--src", help="run another source tree (PYTHONPATH) instead of this checkout")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_load_cpu.json"))
    args = parser.parse_args()
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    shown = {k: result[k] for k in ("health", "submit_all", "status_codes_total", "5xx", "unanswered_total",
                                    "rss_mb", "sigterm_to_exit_s")}
    print(json.dumps(shown, indent=2))


if __name__ == "__main__":
    main()
